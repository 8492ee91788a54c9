/* A minimal JSON reader: objects, arrays, strings (with the common escapes), numbers, booleans, null. */
#include "json_min.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
    const char *p;
    int failed;
};

static struct jnode *parse_value(struct parser *ps);

static void skip_ws(struct parser *ps)
{
    while (*ps->p && isspace((unsigned char)*ps->p))
        ps->p++;
}

static struct jnode *new_node(enum jtype type)
{
    struct jnode *n = calloc(1, sizeof(*n));
    if (n)
        n->type = type;
    return n;
}

static char *parse_string_raw(struct parser *ps)
{
    if (*ps->p != '"') {
        ps->failed = 1;
        return NULL;
    }
    ps->p++;
    size_t cap = 32, len = 0;
    char *out = malloc(cap);
    while (out && *ps->p && *ps->p != '"') {
        char c = *ps->p++;
        if (c == '\\') {
            char e = *ps->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u':
                /* The state files are ASCII; keep non-ASCII code points as '?'. */
                for (int i = 0; i < 4 && *ps->p; i++)
                    ps->p++;
                c = '?';
                break;
            case '\0': ps->failed = 1; free(out); return NULL;
            default: c = e; break;
            }
        }
        if (len + 2 > cap) {
            cap *= 2;
            char *grown = realloc(out, cap);
            if (!grown) {
                free(out);
                return NULL;
            }
            out = grown;
        }
        out[len++] = c;
    }
    if (!out || *ps->p != '"') {
        ps->failed = 1;
        free(out);
        return NULL;
    }
    ps->p++;
    out[len] = '\0';
    return out;
}

static struct jnode *parse_container(struct parser *ps, enum jtype type, char close)
{
    struct jnode *n = new_node(type), **tail;
    if (!n)
        return NULL;
    tail = &n->child;
    ps->p++;
    skip_ws(ps);
    if (*ps->p == close) {
        ps->p++;
        return n;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (type == J_OBJ) {
            key = parse_string_raw(ps);
            skip_ws(ps);
            if (!key || *ps->p != ':') {
                free(key);
                ps->failed = 1;
                break;
            }
            ps->p++;
        }
        struct jnode *v = parse_value(ps);
        if (!v) {
            free(key);
            ps->failed = 1;
            break;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        skip_ws(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return n;
        }
        ps->failed = 1;
        break;
    }
    json_free(n);
    return NULL;
}

static struct jnode *parse_value(struct parser *ps)
{
    skip_ws(ps);
    const char *p = ps->p;
    struct jnode *n;
    switch (*p) {
    case '{': return parse_container(ps, J_OBJ, '}');
    case '[': return parse_container(ps, J_ARR, ']');
    case '"':
        n = new_node(J_STR);
        if (n && !(n->str = parse_string_raw(ps))) {
            free(n);
            return NULL;
        }
        return n;
    case 't':
    case 'f':
        n = new_node(J_BOOL);
        if (n && strncmp(p, "true", 4) == 0) {
            n->boolean = 1;
            ps->p += 4;
        } else if (n && strncmp(p, "false", 5) == 0) {
            ps->p += 5;
        } else {
            free(n);
            return NULL;
        }
        return n;
    case 'n':
        if (strncmp(p, "null", 4) != 0)
            return NULL;
        ps->p += 4;
        return new_node(J_NULL);
    default: {
        char *end;
        double v = strtod(p, &end);
        if (end == p)
            return NULL;
        ps->p = end;
        n = new_node(J_NUM);
        if (n)
            n->num = v;
        return n;
    }
    }
}

struct jnode *json_parse(const char *text)
{
    struct parser ps = {text, 0};
    struct jnode *root = parse_value(&ps);
    skip_ws(&ps);
    if (ps.failed || (root && *ps.p)) {
        json_free(root);
        return NULL;
    }
    return root;
}

void json_free(struct jnode *node)
{
    while (node) {
        struct jnode *next = node->next;
        json_free(node->child);
        free(node->str);
        free(node->key);
        free(node);
        node = next;
    }
}

const struct jnode *json_get(const struct jnode *obj, const char *key)
{
    if (!obj || obj->type != J_OBJ)
        return NULL;
    for (const struct jnode *c = obj->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

double json_num(const struct jnode *obj, const char *key, double fallback)
{
    const struct jnode *n = json_get(obj, key);
    return n && n->type == J_NUM ? n->num : fallback;
}

int json_bool(const struct jnode *obj, const char *key, int fallback)
{
    const struct jnode *n = json_get(obj, key);
    if (!n)
        return fallback;
    if (n->type == J_BOOL)
        return n->boolean;
    if (n->type == J_NUM)
        return n->num != 0;
    return fallback;
}

const char *json_str(const struct jnode *obj, const char *key, const char *fallback)
{
    const struct jnode *n = json_get(obj, key);
    return n && n->type == J_STR ? n->str : fallback;
}

char *json_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 8192, len = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len < 2) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
        }
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}
