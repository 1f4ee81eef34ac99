"""``python -m sparsa``: the same CLI as the ``sparsa`` command."""
from .cli import app

if __name__ == "__main__":
    app(prog_name="sparsa")
