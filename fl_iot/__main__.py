"""``python -m fl_iot`` is the ``fl-iot`` command."""

from fl_iot.cli import main

main()
