"""A stand-in for the `podium` executable, for the DAG's tests: it records each call and answers from a file.

    python stand_in.py FOLDER <podium arguments>

FOLDER/calls.jsonl gets one line per call: the arguments and the working directory. `cycle --plan` prints
the plan FOLDER/plans.json holds for its `--as-of` date (a date it has no plan for: one `error:` line on
stderr, exit 1, as `podium` fails); `status` prints a JSON object; every other command prints a line.
Standard library only: any python runs it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    """Record the call, then answer it; the exit code is podium's (0, or 1 for a refused date)."""
    folder, args = Path(sys.argv[1]), sys.argv[2:]
    with (folder / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps({"args": args, "cwd": os.getcwd()}) + "\n")
    if args[:1] == ["cycle"] and "--plan" in args:
        as_of = args[args.index("--as-of") + 1]
        plans = json.loads((folder / "plans.json").read_text())
        if as_of not in plans:
            print(f"error: no plan for {as_of} (stand-in)", file=sys.stderr)
            return 1
        print(json.dumps(plans[as_of], indent=2))
    elif args[:1] == ["status"]:
        print(json.dumps({"stand_in": True}, indent=2))
    else:
        print(f"stand-in: {' '.join(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
