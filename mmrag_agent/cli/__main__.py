"""``python -m mmrag_agent.cli``: the same as the ``mmrag`` command."""

from . import main

main()
