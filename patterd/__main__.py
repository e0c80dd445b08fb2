"""``python -m patterd`` is the ``patterd`` command."""

from .cli import main

raise SystemExit(main())
