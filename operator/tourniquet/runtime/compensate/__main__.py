"""``python -m tourniquet.runtime.compensate``: see :mod:`tourniquet.runtime.compensate`."""

from tourniquet.runtime.compensate import main

raise SystemExit(main())
