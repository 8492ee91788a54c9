"""TLS as vLLM's server does it: --ssl-certfile/--ssl-keyfile/--ssl-ca-certs, and --enable-ssl-refresh, which
reloads the files into the live context when they change, with vLLM's log lines."""

import os
import ssl
import threading
import time

from . import log


def tls_context(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    if args.ssl_ca_certs:
        context.load_verify_locations(args.ssl_ca_certs)
    context.verify_mode = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 2: ssl.CERT_REQUIRED}[args.ssl_cert_reqs]
    return context


def watch_certificates(context, args):
    """Watches the files as vLLM does (inotify through watchfiles, on each file): a change reloads the pair; a
    half-written pair is retried on the next change."""
    pairs = [([args.ssl_keyfile, args.ssl_certfile], "Reloading SSL certificate chain",
              lambda: context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile))]
    if args.ssl_ca_certs:
        pairs.append(([args.ssl_ca_certs], "Reloading SSL CA certificates",
                      lambda: context.load_verify_locations(args.ssl_ca_certs)))
    for paths, message, reload in pairs:
        log.info("ssl.py:60", "SSLCertRefresher monitors files: %s" % paths)
        threading.Thread(target=_watch, args=(paths, message, reload), daemon=True, name="ssl-refresh").start()


def _stat(path):
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns


# watchfiles.awatch's defaults, which vLLM's SSLCertRefresher keeps: changes are gathered until none came for STEP
# seconds (or DEBOUNCE passed), then handed over as one batch.
STEP = 0.05
DEBOUNCE = 1.6
IDLE_POLL = 0.1


def _watch(paths, message, reload):
    """An inotify watch follows the file it was set on, not its name: when a file is replaced (an atomic rename)
    or removed, vLLM reloads once and then no longer sees that path change (seen with the real vLLM 0.32). Files
    rewritten in place are followed for ever. As in vLLM, each change of a batch logs and reloads: a pair written
    within milliseconds is one batch, so no reload sees a new key with the old certificate."""
    watched = dict((path, _stat(path)) for path in paths)
    while watched:
        time.sleep(IDLE_POLL)
        batch = _changes(watched)
        if not batch:
            continue
        started = time.monotonic()
        while time.monotonic() - started < DEBOUNCE:
            time.sleep(STEP)
            more = _changes(watched)
            if not more:
                break
            batch.extend(more)
        for kind, path in batch:
            log.info("ssl.py:64", "File change detected: %s - %s" % (kind, path))
            try:
                log.info("ssl.py:34", message)
                reload()
            except (OSError, ssl.SSLError) as exc:
                log.error("ssl.py:67", "SSLCertRefresher failed taking action on file change. Error: %s" % exc)
                break


def _changes(watched):
    """The changes since the last look, as (kind, path); a replaced or removed file is no longer watched."""
    changed = []
    for path, before in list(watched.items()):
        now = _stat(path)
        if now == before:
            continue
        if now is None or before is None or now[0] != before[0]:
            changed.append(("deleted", path))
            del watched[path]
        else:
            changed.append(("modified", path))
            watched[path] = now
    return changed
