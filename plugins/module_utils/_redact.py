# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Removing secrets from text that leaves the host: log excerpts, command lines, inspect output, server bodies.

vLLM logs its non-default arguments at start-up, API keys included, so log evidence is never returned as is.

Three rules keep this safe on hostile text:
- every pattern is line-local (no class matches CR or LF), so a mask never swallows the evidence on the next line;
  the one exception is a PEM private-key block, masked line by line between its markers;
- every pattern starts with a literal or a bounded class and its quantifiers cannot overlap, so the work is linear
  in the text: a 200 KB logged prompt costs milliseconds, not minutes;
- known secrets are masked in any letter case and as a server may echo them (JSON-escaped, URL-encoded), and so
  are the pieces a cut leaves of them: a prefix or a suffix of six characters or more, anywhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import string

try:
    from urllib.parse import quote
except ImportError:  # pragma: no cover - Python 2
    from urllib import quote

MASK = "********"

# The shortest piece of a known secret that is still masked where a cut may have left it.
MIN_PIECE = 6

# Values that say no secret is set: kept, because "api_key=None" is evidence an SRE needs,
# and words that say how a credential stands ("credentials: not found", "token: missing"), not what it is.
_EMPTY_VALUES = frozenset(("none", "null", "''", '""', "[]", "~", "<none>", "<redacted>", MASK, "not", "missing",
                           "unset", "empty", "n/a", "required", "invalid", "expired", "true", "false", "disabled",
                           "enabled"))

# A value after a separator: quoted (escapes allowed, a Python prefix such as b'' too, or JSON-escaped quotes as in
# a JSON string inside JSON), a call of a quoted text (SecretStr('...')), a Python/JSON list, a quote left unclosed,
# or a bare word. Quoted texts and lists are bounded: an unclosed quote or bracket repeated along a line would
# otherwise be rescanned to the line's end from each opening, which is quadratic.
_DQ = r'"(?:[^"\\\r\n]|\\[^\r\n]){0,2048}"'
_SQ = r"'(?:[^'\\\r\n]|\\[^\r\n]){0,2048}'"
_VALUE = (r"""(?:\\"[^"\\\r\n]{0,2048}\\"|[bBuUrR]{0,2}(?:%s|%s)|[A-Za-z_][A-Za-z0-9_]{0,40}\((?:%s|%s)\)|"""
          r"""\[[^\]\r\n]{0,2048}\]|["'][^"'\s]{1,2048}|[^\s"',;&}\])<]+)""" % (_DQ, _SQ, _DQ, _SQ))

# Names whose value is a secret. A name counts when the word ends there: `max_tokens` and `tokenizer` do not,
# and neither do `*_PATH` / `*_FILE`, which only point at a secret.
_SECRET_NAME = (r"(?:api[-_.]?keys?|apikey|access[-_]?key|secret[-_]?(?:access[-_]?)?key|private[-_]?key(?:[-_]?id)?|"
                r"(?:account|shared[-_]?access|subscription)[-_]?key|"
                r"client[-_]?secret|secret|(?:access|auth|refresh|id|session|bearer|api|hf)?[-_]?token|bearer|"
                r"passw(?:or)?d|passphrase|pass|credentials?|auth)")
# A name starts after a non-alphanumeric character, or inside a camelCase word (openaiApiKey).
_NAME_START = r"(?:(?<![A-Za-z0-9])|(?<=[a-z])(?-i:(?=[A-Z])))"
_NAME_END = r"(?![A-Za-z0-9])"
# A token starts where no token character precedes it: "eyJ-eyJ-..." then has one start, not one per "eyJ" that
# each rescans the rest of the run.
_TOKEN_START = r"(?<![A-Za-z0-9_-])"
# What follows --api-key after its first value: whole words without ':' (see below).
_MORE_KEYS = r"""(?:"[^"\r\n]{0,2048}"|'[^'\r\n]{0,2048}'|[^\s"',;&}\]):]+)"""

_PATTERNS = (
    # PEM and PGP private keys: the only multi-line shape, bounded by its own markers (or the end of the text).
    (re.compile(r"(-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)(.*?)"
                r"(-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL), "pem"),
    # Any Authorization scheme, as a header, in JSON or in a Python repr: the credentials go, and a scheme stays
    # only when it is a known one (an unknown first word may be the credential itself).
    (re.compile(r"""((?:proxy-)?authorization["']?[ \t]{0,8}[:=][ \t]{0,8})("[^"\r\n]{0,2048}"|'[^'\r\n]{0,2048}'|"""
                r"""[^\s"',;}]+(?:[ \t]{1,8}[^\s"',;}]+)?)""", re.IGNORECASE), "header"),
    # Other credential headers: X-API-Key, api-key, X-Auth-Token, Cookie (curl -H, raw HTTP, reprs).
    (re.compile(r"""(%s(?:x-api-key|api-key|x-auth-token|x-access-token|ocp-apim-subscription-key|cookie|"""
                r"""set-cookie)["']?[ \t]{0,8}:[ \t]{0,8})(%s)""" % (_NAME_START, _VALUE), re.IGNORECASE), "value"),
    # A bearer token wherever it appears.
    (re.compile(r"(%sbearer[ \t]{1,8})([^\s\"',;}]+)" % _NAME_START, re.IGNORECASE), "value"),
    # docker inspect's JSON argv: "--api-key", "K1", "K2" (every value up to the next flag).
    (re.compile(r"""(["']--?(?:api[-_]key|hf[-_]token|token|password|secret)["'])((?:[ \t]{0,8},[ \t]{0,8}"""
                r"""(?:"(?!-)(?:[^"\\\r\n]|\\[^\r\n]){0,2048}"|'(?!-)(?:[^'\\\r\n]|\\[^\r\n]){0,2048}'))+)""",
                re.IGNORECASE), "json-argv"),
    # Command lines: --api-key K1 K2 (several keys until the next flag), --api_key=K.
    # A further value is a whole word without ':', so a log line's own text after the key ("--api-key K
    # torch.OutOfMemoryError: ...") stays evidence.
    (re.compile(r"(%s--?api[-_]key(?:=|[ \t]{1,8}))(%s(?:[ \t]{1,8}(?!-)%s(?=\s|\Z))*)"
                % (_NAME_START, _VALUE, _MORE_KEYS), re.IGNORECASE), "value"),
    # Any other flag whose name ends in a secret's: --hf-token, --openai-api-key, --api-token, --client-secret,
    # --access-key, --password (the lazy, bounded prefix keeps it linear).
    (re.compile(r"(%s--?(?:[A-Za-z0-9][A-Za-z0-9-]{0,40}?-)?(?:api[-_]key|token|password|passwd|secret|"
                r"access[-_]key)(?:=|[ \t]{1,8}))(%s)" % (_NAME_START, _VALUE), re.IGNORECASE), "value"),
    # mysql -pPASSWORD (the password glued to -p)
    (re.compile(r"(\bmysql(?:dump|admin)?\b[^\r\n]{0,256}?[ \t]-p)([^\s\"']+)"), "value"),
    # curl -u user:password / --user user:password
    (re.compile(r"(%s(?:-u|--user)[ \t]{1,8}[^\s:\"']{0,128}:)([^\s\"']+)" % _NAME_START), "value"),
    # URL userinfo: scheme://user:PASSWORD@host, and a token given as the user (https://TOKEN@github.com), which
    # is told from a user name by its length (16 characters or more).
    (re.compile(r"(://[^\s/@:\"']{0,256}:)([^\s/@\"']{1,256})(?=@)"), "value"),
    (re.compile(r"(://)([A-Za-z0-9_-]{16,256})(?=(?::[^\s/@\"']{0,256})?@)"), "value"),
    # Query strings: ?token=X&sig=Y
    (re.compile(r"([?&](?:%s|key|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
                r"([^\s&#\"']+)" % _SECRET_NAME, re.IGNORECASE), "value"),
    # A Kubernetes env entry: {"name": "HF_TOKEN", "value": "..."}
    (re.compile(r"""("name"[ \t]{0,8}:[ \t]{0,8}"[A-Za-z0-9_]{0,64}(?:TOKEN|KEY|SECRET|PASSWORD|PASSWD)"[ \t]{0,8},"""
                r"""[ \t]{0,8}"value"[ \t]{0,8}:[ \t]{0,8})(%s)""" % _DQ, re.IGNORECASE), "value"),
    # XML: <password>X</password>, <add key="ApiKey" value="X"/>
    (re.compile(r"(<%s>)([^<\r\n]{1,2048})(?=</)" % _SECRET_NAME, re.IGNORECASE), "value"),
    (re.compile(r"""(key="%s"[ \t]{1,8}value=)(%s)""" % (_SECRET_NAME, _DQ), re.IGNORECASE), "value"),
    # .netrc: machine HOST login USER password X (on one line, or a line of its own)
    (re.compile(r"(\bmachine\b[^\r\n]{0,512}?\bpassword[ \t]{1,8})(\S+)"), "value"),
    (re.compile(r"(?m)^([ \t]*password[ \t]{1,8})(\S+)[ \t]*$"), "value"),
    # Environment variables with any prefix (PGPASSWORD, MYSQL_PWD, OPENAI_KEY): the name decides, see _mask_env.
    (re.compile(r"(?-i:\b[A-Z][A-Z0-9_]{0,63}=)(%s)" % _VALUE), "env"),
    # NAME=value, NAME: value, 'name': 'value', "name": ["v1", "v2"], name=['v1'], NAME => value, {\"name\": ...}
    (re.compile(r"""(%s%s%s(?:\\?["'])?[ \t\u00a0]{0,8}(?:=>|=|:|\uff1a)[ \t\u00a0]{0,8})(%s)"""
                % (_NAME_START, _SECRET_NAME, _NAME_END, _VALUE), re.IGNORECASE), "named"),
    # Tokens recognisable by their shape wherever they appear.
    (re.compile(r"%s(?:hf_[A-Za-z0-9]{8,}|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|"
                r"github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{16,}|xox[abposr]-[A-Za-z0-9-]{10,}|"
                r"npm_[A-Za-z0-9]{30,}|pypi-AgE[A-Za-z0-9_-]{20,}|"
                r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}|"
                r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})" % _TOKEN_START), "whole"),
)

# The end of an environment variable's name that says its value is a secret (not *_PATH, *_FILE: those point at one).
_ENV_SECRET = re.compile(r"(?:PASSWORD|PASSWD|PASS|PWD|SECRET|TOKEN|KEY|APIKEY|CREDENTIALS?)=\Z")


def _mask_env(match):
    name = match.group(0)[:len(match.group(0)) - len(match.group(1))]
    if _ENV_SECRET.search(name) and name not in ("PWD=", "OLDPWD="):
        return name + _mask_value(match.group(1))
    return match.group(0)


def _mask_value(value):
    if value.strip("'\"").lower() in _EMPTY_VALUES or value.lower() in _EMPTY_VALUES:
        return value
    if value[:1] in "'\"" and value[-1:] == value[:1] and len(value) >= 2:
        return value[0] + MASK + value[0]
    if value[:1] == "[":
        quote = '"' if '"' in value else "'"
        return "[" + quote + MASK + quote + "]"
    return MASK


_SCHEMES = frozenset(("basic", "bearer", "digest", "token", "apikey", "api-key", "key", "negotiate", "ntlm", "hoba",
                      "mutual", "vapid", "dpop", "oauth", "aws4-hmac-sha256", "scram-sha-1", "scram-sha-256",
                      "sharedkey", "sharedaccesssignature", "splunk", "gsslogin", "googlelogin"))


# What a tokenizer or model config calls a token: a special token (eos_token: </s>, pad_token: [PAD],
# "image_token": "<|image|>") or a count (num_token: 5). Evidence, never a credential.
_SPECIAL_TOKEN = re.compile(r"""["']?(?:<\|?[a-z_/.-]{1,40}\|?>|\[[A-Z_]{1,20}\]|[0-9]{1,6})["']?\Z""")


def _mask_named_value(match):
    name, value = match.group(1), match.group(2)
    if "token" in name.lower() and _SPECIAL_TOKEN.match(value):
        return name + value
    return name + _mask_value(value)


def _mask_header(match):
    name, value = match.group(1), match.group(2)
    if value[:1] in "'\"":
        return name + _mask_value(value)
    words = value.split(None, 1)
    if len(words) == 2 and words[0].lower() in _SCHEMES:
        return name + value[:len(value) - len(words[1])] + MASK
    return name + MASK


_QUOTED = re.compile(_DQ + "|" + _SQ)


def _mask_json_argv(match):
    return match.group(1) + _QUOTED.sub(lambda value: value.group(0)[0] + MASK + value.group(0)[0], match.group(2))


def _mask_pem(match):
    return match.group(1) + re.sub(r"[^\r\n]+", MASK, match.group(2)) + match.group(3)


_REPLACERS = {
    "pem": _mask_pem,
    "header": _mask_header,
    "value": lambda match: match.group(1) + _mask_value(match.group(2)),
    "named": _mask_named_value,
    "env": _mask_env,
    "json-argv": _mask_json_argv,
    "whole": lambda match: MASK,
}


def _known_secrets(secrets):
    """The secrets as distinct non-empty strings, each with the forms a server or a log may echo it in (JSON-escaped,
    URL-encoded); a lone string is one secret."""
    if secrets is None:
        return []
    if isinstance(secrets, (str, bytes)):
        secrets = [secrets]
    values = set()
    for secret in secrets:
        if secret is None:
            continue
        if isinstance(secret, bytes):
            secret = secret.decode("utf-8", "replace")
        secret = str(secret)
        if secret:
            escaped = json.dumps(secret)[1:-1]
            values.update((secret, escaped, escaped.replace("/", "\\/"), quote(secret, safe="")))
    return sorted(values, key=lambda value: (-len(value), value))


# ASCII letters only, so that the folded text keeps its length (str.lower() may not, outside ASCII).
_FOLD = dict((ord(letter), ord(letter.lower())) for letter in string.ascii_uppercase)


def _prefix_spans(folded, secret):
    """(start, end) of each run of `folded` that starts like `secret`: the whole of it, or a piece a cut left
    (MIN_PIECE characters or more). Linear: the search resumes after each run."""
    seed = secret[:MIN_PIECE]
    spans = []
    found = folded.find(seed)
    while found != -1:
        end = found + len(seed)
        while end < len(folded) and end - found < len(secret) and folded[end] == secret[end - found]:
            end += 1
        spans.append((found, end))
        found = folded.find(seed, end)
    return spans


def _secret_spans(text, secrets):
    """Where the known secrets, or the pieces a cut left of them (a prefix, or a suffix, of MIN_PIECE characters or
    more), stand in `text`, in any letter case."""
    folded = text.translate(_FOLD)
    backwards = folded[::-1]
    spans = []
    for secret in secrets:
        secret = secret.translate(_FOLD)
        if len(secret) < MIN_PIECE:
            start = folded.find(secret)
            while start != -1:
                spans.append((start, start + len(secret)))
                start = folded.find(secret, start + len(secret))
            continue
        spans += _prefix_spans(folded, secret)
        spans += [(len(text) - end, len(text) - start) for start, end in _prefix_spans(backwards, secret[::-1])]
    return spans


def _mask_spans(text, spans):
    pieces = []
    done = 0
    for start, end in sorted(spans):
        if end <= done:
            continue
        if start >= done:
            pieces.append(text[done:start])
            pieces.append(MASK)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def redact(text, secrets=(), shapes=True):
    """`text` with known secrets (values given) and, unless `shapes` is false, secret-shaped strings masked.

    shapes=False is for the module's own messages, whose prose ("HF_TOKEN is a secret: pass it ...") the shapes
    would mangle; they quote what a command answered, which can hold a known key but no secret of another's."""
    if not text:
        return text
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    known = _known_secrets(secrets)
    if known:
        text = _mask_spans(text, _secret_spans(text, known))
    if shapes:
        for pattern, kind in _PATTERNS:
            text = pattern.sub(_REPLACERS[kind], text)
    return text
