"""The `clipsearch` command's entry point: a plain text query goes straight to the library's
running `clipsearch serve`, everything else to the full CLI (clipsearch.cli).

Importing the `clipsearch` package loads the engine (numpy, SQLite, FAISS glue: ~0.4 s), which
is most of what `clipsearch query` costs when a warm server answers in milliseconds. So this
module sits outside the package, imports only the standard library, and serves the one case
the server handles exactly as the CLI would: `clipsearch query WORDS... [-n N] [--in DIR]
[--model M] [--json | --paths [-0]] [--library DIR]` with a plain text (no +/- terms, weights,
images or ids) and a live server of that library that answers with results. Anything else
(another command or option, an odd value, no server, a stale server file, an error answer, no
results) runs the full CLI, which validates, explains and searches in-process as before.
What it prints is the CLI's own format (tests/test_serve_entry.py compares the bytes).
"""

from __future__ import annotations

import json
import os
import sys

SERVER_FILE = "server.json"  # written by clipsearch.remote.write_server_file
LIBRARY_HEADER = "X-Clipsearch-Library"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic",
                  ".heif", ".avif")  # search.query's: such a word is an image term
# search.SearchResult's fields in order (tests/test_serve_entry.py checks they match).
RESULT_FIELDS = ("rank", "score", "path", "file_id", "root", "width", "height", "taken_at",
                 "grade", "taken_at_source", "taken_offset", "camera_make", "camera_model",
                 "format")
_VALUED = {"-n": "limit", "--limit": "limit", "--in": "within", "--model": "model",
           "--library": "library"}
_FLAGS = {"--json": "as_json", "--paths": "paths_only", "-0": "null", "--null": "null"}


def main() -> int | None:
    request = plain_query(sys.argv[1:])
    if request is not None:
        try:
            answer = ask_server(**request["ask"])
            shown = answer and answer.get("results") and render(answer, **request["show"])
        except KeyboardInterrupt:  # as the CLI says it (clipsearch/cli_errors.py)
            sys.stderr.write("Interrupted; nothing was changed.\n")
            return 130
        if shown:
            return write(*shown)
    from clipsearch.cli import main as full_cli

    return full_cli()


def plain_query(argv: list[str]) -> dict | None:
    """The server request and the output format of a `query` the server can answer as the CLI
    would, or None for anything else (the full CLI then parses, checks and explains)."""
    if len(argv) < 2 or argv[0] != "query":
        return None
    opts: dict = {"limit": "10", "within": None, "model": None, "as_json": False,
                  "paths_only": False, "null": False,
                  "library": os.environ.get("CLIPSEARCH_LIBRARY")}
    words: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _VALUED and (inline or arg == name):
            value = inline or next(args, None)
            if not value:
                return None  # missing or empty: click's rules and messages
            opts[_VALUED[name]] = value  # repeated: the last one counts, as in click
        elif arg in _FLAGS:
            opts[_FLAGS[arg]] = True
        elif arg.startswith("-") or not plain_word(arg):
            return None  # another option, "--", a sign, a weight, an image or id term
        else:
            words.append(arg)
    text = " ".join(" ".join(words).split())
    limit = opts["limit"]
    text_out = not (opts["as_json"] or opts["paths_only"])
    if (not text or not limit.isascii() or not limit.isdigit() or int(limit) < 1
            or not opts["library"] and "CLIPSEARCH_LIBRARY" in os.environ
            or opts["as_json"] and opts["paths_only"] or opts["null"] and not opts["paths_only"]
            or text_out and not utf8(sys.stdout)  # click.echo re-encodes other streams
            or opts["within"] and os.path.exists(opts["within"])  # click.Path's checks
            and not (os.path.isdir(opts["within"]) and os.access(opts["within"], os.R_OK))):
        return None
    return {"ask": {"library": opts["library"], "text": text, "limit": int(limit),
                    "within": opts["within"], "model": opts["model"]},
            "show": {"as_json": opts["as_json"], "paths_only": opts["paths_only"],
                     "null": opts["null"]}}


def plain_word(word: str) -> bool:
    """A word that search.query reads as plain text whatever its neighbours (conservative:
    "10:30" and "st." are text there too, but take the full CLI)."""
    return (word not in ("+", "-") and ":" not in word and not word.startswith(("/", "~", "."))
            and not word.lower().endswith(IMAGE_SUFFIXES))


def utf8(stream) -> bool:
    import codecs

    try:
        return codecs.lookup(stream.encoding).name == "utf-8"
    except (AttributeError, LookupError, TypeError):
        return False


def server_of(library: str | None) -> tuple[dict, str] | None:
    """The live server announced in the library (its server.json) and the library's tag."""
    if library:
        folder = os.path.abspath(os.path.expanduser(library))
    elif os.environ.get("CLIPSEARCH_LIBRARY"):
        folder = os.path.abspath(os.path.expanduser(os.environ["CLIPSEARCH_LIBRARY"]))
    else:
        from platformdirs import user_data_dir

        folder = os.path.join(user_data_dir("clipsearch", appauthor=False), "library")
    try:
        with open(os.path.join(folder, SERVER_FILE), "rb") as f:
            info = json.loads(f.read())
        os.kill(int(info["pid"]), 0)  # alive (a stale file after a crash is ignored)
        int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info, library_tag(folder)


def library_tag(path: str | os.PathLike) -> str:
    """The library's path as an HTTP header value (any bytes, quoted)."""
    from urllib.parse import quote

    return quote(os.fsencode(os.path.abspath(path)))


def ask_server(library: str | None, text: str, *, limit: int = 10, within: str | None = None,
               model: str | None = None, timeout: float = 30.0) -> dict | None:
    """The server's /api/search answer for a plain text, or None when no live server of this
    library answered with one (no file, dead pid, refused, another library, an error)."""
    found = server_of(library)
    if found is None:
        return None
    info, tag = found
    from http.client import HTTPConnection
    from urllib.parse import urlencode

    params: dict = {"q": text, "limit": limit}
    if within is not None:
        params["in"] = os.path.abspath(os.fspath(within))
    if model is not None:
        params["model"] = model
    headers = {"Authorization": f"Bearer {info['token']}"} if info.get("token") else {}
    try:  # no proxies: the server is on this machine, and a proxy must not see the token
        conn = HTTPConnection(str(info["host"]), int(info["port"]), timeout=timeout)
        conn.request("GET", f"/api/search?{urlencode(params)}", headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200 or response.getheader(LIBRARY_HEADER) != tag:
            return None  # an error answer, or another server took the port since
        answer = json.loads(body)
        return answer if isinstance(answer.get("results"), list) else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # refused, timed out, not the answer we know: work in-process


def result_dicts(answer: dict) -> list[dict]:
    """The results as the CLI's --json prints them (SearchResult.to_dict); KeyError when a
    result lacks a field (a server of another version)."""
    rows = [{name: r[name] for name in RESULT_FIELDS} for r in answer["results"]]
    if not all(isinstance(r["path"], str) and isinstance(r["rank"], int) for r in rows):
        raise ValueError("not a result")
    return rows


def render(answer: dict, as_json: bool, paths_only: bool,
           null: bool) -> tuple[bytes, list[str]] | None:
    """What `clipsearch query` prints for these results (clipsearch/cli.py, query): stdout's
    bytes and stderr's lines, or None for an answer not shaped as this version's."""
    try:
        results = result_dicts(answer)
        why = answer.get("reason")
        notes = [f"No results: {why}"] if why and (as_json or paths_only) else []
        if as_json:
            text = json.dumps(results, ensure_ascii=False, indent=2)
            return text.encode("utf-8", "backslashreplace") + b"\n", notes
        if paths_only:
            end = b"\0" if null else b"\n"
            return b"".join(os.fsencode(r["path"]) + end for r in results), notes
        if answer.get("good_match") is False:
            notes.append("No good match: nothing here is graded strong; the closest photos "
                         "follow.")
        lines = []
        for r in results:
            grade = f"  {r['grade']:<6}" if r.get("grade") else ""
            score = (f"{r['score']:.3f}" if r["score"] is not None
                     else f"{r['width']}x{r['height']}")
            lines.append(f"{r['rank']:>3}  {score}{grade}  {printable(r['path'])}\n")
        return "".join(lines).encode("utf-8"), notes  # stdout is UTF-8 (plain_query)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write(out: bytes, notes: list[str]) -> int:
    try:
        for note in notes:
            sys.stderr.write(note + "\n")
        sys.stderr.flush()
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except BrokenPipeError:  # `clipsearch query ... | head`: the reader left, as the CLI does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return 0


def printable(path: str) -> str:
    """store.paths.printable: undecodable bytes as \\xNN, control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                   for ch in text)


if __name__ == "__main__":
    sys.exit(main())
