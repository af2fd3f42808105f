"""One line of output per event, for the SDK test scripts: the SDK calls handlers from several
threads, and print() writes the text and the newline separately, so two lines printed at once
could interleave. One write per line, under a lock."""
import sys
import threading

_lock = threading.Lock()


def out(line):
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
