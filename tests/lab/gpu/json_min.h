/* A minimal JSON reader for the lab's fake NVML: enough for the GPU state file and claim files.
 * Test infrastructure only; it never ships in the collection. */
#ifndef INFEROPS_LAB_JSON_MIN_H
#define INFEROPS_LAB_JSON_MIN_H

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jnode {
    enum jtype type;
    double num;
    int boolean;
    char *str;            /* J_STR value */
    char *key;            /* member name when the parent is an object */
    struct jnode *child;  /* first element / member */
    struct jnode *next;   /* next sibling */
};

struct jnode *json_parse(const char *text);
void json_free(struct jnode *node);
const struct jnode *json_get(const struct jnode *obj, const char *key);
double json_num(const struct jnode *obj, const char *key, double fallback);
int json_bool(const struct jnode *obj, const char *key, int fallback);
const char *json_str(const struct jnode *obj, const char *key, const char *fallback);
char *json_read_file(const char *path);

#endif
