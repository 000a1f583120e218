#!/usr/bin/env python3
"""Reads kosoku's reports for scripts/autobahn: the summary, and which cases to try again.

    autobahn_report.py [--min-pass N|all] [--label TEXT] [--split-out FILE]
                       REPORT_DIR [REPORT_DIR ...] -- CASE [CASE ...]

REPORT_DIRs are kosoku output folders (index.json plus one JSON file per case), first
try first: a case's latest result counts. CASEs are the ids (or kosoku `*` globs) that
were asked for; one with no result counts as failed.

With --split-out, writes the ids of the failing cases that failed only because the echo
came back split (see `is_split`) to FILE, one a line, and prints nothing. Otherwise
prints each failing case (kosoku's reasons, the frames sent and answered, what was
expected) and the closing line `autobahn: N of K <label> pass, M do not`, and exits 1
when fewer than --min-pass cases passed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
OPCODES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


def load(report: str) -> dict[str, dict]:
    """Case id -> index entry plus the case's own report (under "case")."""
    try:
        with open(os.path.join(report, "index.json")) as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        print(f"autobahn: no usable report in {report}: {err}", file=sys.stderr)
        return {}
    results = {}
    for agent_cases in index.values():
        for case_id, entry in agent_cases.items():
            path = os.path.join(report, entry["reportfile"])
            try:
                with open(path) as f:
                    case = json.load(f)
            except (OSError, ValueError):
                case = {}
            results[case_id] = dict(entry, case=case, path=path)
    return results


def passed(entry: dict) -> bool:
    return entry["behavior"] in ACCEPTED and entry["behaviorClose"] in ACCEPTED


def key(case_id: str) -> list[int]:
    return [int(p) if p.isdigit() else 0 for p in case_id.split(".")]


def frames(entry: dict, kind: str) -> list[list]:
    """Wire-log frames: kind 'TF' (sent by kosoku) or 'RF' (received from the proxy)."""
    return [e for e in entry["case"].get("wirelog") or [] if e and e[0] == kind]


def is_split(entry: dict) -> bool:
    """True when the proxy answered the binary data it was sent, byte count for byte count,
    but in more than one binary message and nothing else went wrong.

    The proxy relays a byte stream: the echo server answers what one read gave it, and
    the proxy frames what one read of the echo gave it. TCP keeps no message boundaries,
    so a 64 KiB message can come back in two pieces however correct the proxy is (a
    loopback segment holds 65483 bytes). Such a case is worth another try.
    """
    if passed(entry) or entry["behavior"] in ACCEPTED:
        return False
    sent = [f for f in frames(entry, "TF") if f[2] in (0, 1, 2)]
    got = [f for f in frames(entry, "RF") if f[2] in (0, 1, 2)]
    if not sent or len(got) < 2 or any(f[2] != 2 for f in sent + got):
        return False
    if entry.get("remoteCloseCode") not in (None, 1000):
        return False
    return sum(f[1][0] for f in sent) == sum(f[1][0] for f in got)


def frame_text(entry: list) -> str:
    """A wire-log frame as e.g. binary(65536), ping(9, 'payload-0') or close(2, code 1000)."""
    (length, payload), op, fin, rsv = entry[1], entry[2], entry[3], entry[4]
    text = f"{OPCODES.get(op, f'opcode{op}')}({length}"
    if op >= 8 and length and isinstance(payload, str):
        if op == 8 and payload.startswith("0x") and len(payload) >= 6:
            text += f", code {int(payload[2:6], 16)}"
        else:
            text += f", {payload[:24]!r}"
    if not fin:
        text += ", fin=0"
    if rsv:
        text += f", rsv={rsv}"
    if entry[0] == "TF" and len(entry) > 7 and entry[7]:
        text += f", chops of {entry[7]}"
    return text + ")"


def frames_text(entry: dict, kind: str, limit: int = 12) -> str:
    shown = [frame_text(f) for f in frames(entry, kind)]
    if len(shown) > limit:
        shown = shown[:limit] + [f"... {len(shown) - limit} more"]
    return " ".join(shown) or "nothing"


def expected_text(case: dict) -> str:
    options = []
    for verdict, events in sorted((case.get("expected") or {}).items()):
        shown = []
        for e in events:
            if e[0] == "message":
                shown.append(f"{'binary' if e[2] else 'text'} message")
            else:
                shown.append(f"{e[0]}({str(e[1])[:24]!r})")
        options.append(f"{verdict}: {' '.join(shown) or 'no message'}")
    close = case.get("expectedClose") or {}
    codes = ",".join(map(str, close.get("closeCode", [])))
    by = "kosoku" if close.get("closedByMe") else "the proxy"
    return "; ".join(options) + f"; close {codes} started by {by}"


def answered_text(entry: dict) -> str:
    case = entry["case"]
    if case.get("droppedByMe"):
        ending = "kosoku dropped the TCP connection"
    elif case.get("closedByMe"):
        ending = "kosoku started the close"
    else:
        ending = "the proxy started the close"
    code = entry.get("remoteCloseCode") or "none"
    return f"{frames_text(entry, 'RF')}; {ending} (proxy close code {code})"


def describe(entry: dict) -> list[str]:
    case = entry["case"]
    return [
        f"case: {' '.join(case.get('description', '').split())}",
        f"behavior {entry['behavior']}: {case.get('result', '')}",
        f"close {entry['behaviorClose']}: {case.get('resultClose', '')}",
        f"sent: {frames_text(entry, 'TF')}",
        f"proxy answered: {answered_text(entry)}",
        f"expected: {expected_text(case)}",
        f"report: {entry['path']}",
    ]


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("usage: autobahn_report.py [options] REPORT_DIR... -- CASE...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--min-pass", default="all")
    parser.add_argument("--label", default="cases")
    parser.add_argument("--split-out")
    parser.add_argument("reports", nargs="+")
    args = parser.parse_args(argv[:split])
    selection = argv[split + 1 :]

    tries = [load(r) for r in args.reports]
    known = set().union(*tries) if tries else set()
    wanted = {c for c in selection if "*" not in c}
    globbed = {c for c in known if any("*" in s and fnmatch.fnmatchcase(c, s) for s in selection)}
    ids = sorted(wanted | globbed, key=key)
    # Each case's results, first try first.
    history = {c: [t[c] for t in tries if c in t] for c in ids}

    if args.split_out is not None:
        with open(args.split_out, "w") as f:
            for case_id, results in history.items():
                if results and is_split(results[-1]):
                    f.write(case_id + "\n")
        return 0

    ok, bad, retried = [], [], []
    for case_id, results in history.items():
        if not results:
            bad.append((case_id, ["no result (kosoku did not run it; see kosoku.log)"]))
        elif passed(results[-1]):
            ok.append(case_id)
            if len(results) > 1:
                first = results[0]
                retried.append(
                    f"RETRIED {case_id}: passed on try {len(results)}; try 1 came back split: "
                    f"{frames_text(first, 'RF')}"
                )
        else:
            lines = describe(results[-1])
            if len(results) > 1:
                lines.append(f"failed all {len(results)} tries (retried: the echo came back split)")
            bad.append((case_id, lines))

    for line in retried:
        print(line)
    for case_id, lines in bad:
        print(f"FAILED {case_id}: {lines[0]}")
        for line in lines[1:]:
            print(f"    {line}")
    need = len(ids) if args.min_pass == "all" else int(args.min_pass)
    print(f"autobahn: reports in {', '.join(args.reports)}; {need} must pass")
    print(f"autobahn: {len(ok)} of {len(ids)} {args.label} pass, {len(bad)} do not")
    return 0 if ids and len(ok) >= need else 1


if __name__ == "__main__":
    sys.exit(main())
