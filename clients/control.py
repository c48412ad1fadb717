#!/usr/bin/env python3
"""Steer a MusicGen radio station from the command line (scripts, livestream bots).

    python clients/control.py set-prompt "dark ambient with rain" --token T
    python clients/control.py set-prompt "upbeat funk" --when next --token T
    python clients/control.py set-params --temperature 0.8 --cfg 4 --token T
    python clients/control.py new-piece --token T
    python clients/control.py status --token T

The token is the one printed at the station's start (`?token=...` in the page URL) or given with
`--control-token`; `--token` defaults to $RADIO_CONTROL_TOKEN. Standalone: only the standard
library. Prints the station's JSON answer; exits 0 on success, 1 when the station refuses the
command, 2 when it cannot be reached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def build_command(args) -> dict:
    command: dict = {"type": args.command.replace("-", "_")}
    if args.command == "set-prompt":
        command["prompt"] = args.prompt
    if args.command == "set-params":
        for name in ("temperature", "top_k", "top_p", "cfg"):
            value = getattr(args, name)
            if value is not None:
                command[name] = value
    if getattr(args, "when", None):
        command["when"] = args.when
    return command


def send(url: str, command: dict, token: str | None, timeout: float = 10.0) -> tuple[int, dict]:
    request = urllib.request.Request(url.rstrip("/") + "/control", data=json.dumps(command).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8765", help="the station (default: %(default)s)")
    p.add_argument("--token", default=os.environ.get("RADIO_CONTROL_TOKEN"),
                   help="the station's control token (default: $RADIO_CONTROL_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)
    prompt = sub.add_parser("set-prompt", help="change the prompt")
    prompt.add_argument("prompt")
    params = sub.add_parser("set-params", help="change the sampling settings")
    params.add_argument("--temperature", type=float)
    params.add_argument("--top-k", dest="top_k", type=int)
    params.add_argument("--top-p", dest="top_p", type=float)
    params.add_argument("--cfg", type=float)
    piece = sub.add_parser("new-piece", help="start a new piece (no old token context)")
    for command in (prompt, params, piece):
        command.add_argument("--when", choices=["now", "next"],
                             help="now: cut in; next: after what is buffered (default: the station's choice)")
    sub.add_parser("status", help="what is playing and what comes next")
    args = p.parse_args(argv)
    try:
        status, answer = send(args.url, build_command(args), args.token)
    except (OSError, ValueError) as err:
        print(f"control: cannot reach the station at {args.url} ({err})", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
