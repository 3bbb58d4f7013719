"""``python -m kei_gateway.config example|docs``: regenerate the example file or the docs page."""

import sys

from kei_gateway.config import configuration_markdown, example_toml

if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "example":
        sys.stdout.write(example_toml())
    elif what == "docs":
        sys.stdout.write(configuration_markdown())
    else:
        sys.exit("usage: python -m kei_gateway.config example|docs")
