"""``python -m proxy`` is the same as the ``drain-proxy`` command."""

from proxy.cli import main

raise SystemExit(main())
