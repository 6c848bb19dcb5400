"""``python -m service.cli``: the same command line as ``sketchwatch``."""

from service.cli import main

if __name__ == "__main__":
    main()
