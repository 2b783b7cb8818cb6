"""``python -m steer_cli`` (used by ``accelerate launch -m steer_cli train ...``)."""

from steer_cli.cli import main

if __name__ == "__main__":
    main()
