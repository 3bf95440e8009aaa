"""``python -m workers QUEUE_URL``: the same worker as ``petarecon worker``."""

from pipeline.cli import app

if __name__ == "__main__":
    import sys

    app(["worker", *sys.argv[1:]])
