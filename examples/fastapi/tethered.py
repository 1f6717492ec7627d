"""Run uvicorn's command line, and exit as soon as stdin reaches end-of-file.

startUpstream (upstream.ts) holds our stdin open as a pipe. When that parent dies by any means,
even SIGKILL, the pipe closes and the server exits instead of holding its port forever.
"""

import os
import sys
import threading

from uvicorn.main import main


def exit_when_parent_goes() -> None:
    sys.stdin.buffer.read()
    os._exit(1)


if __name__ == "__main__":
    threading.Thread(target=exit_when_parent_goes, daemon=True).start()
    main(prog_name="uvicorn")
