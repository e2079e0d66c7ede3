"""`python -m bangui_daemon` is `bangui-daemon`."""

from bangui_daemon.cli.daemon import main

main()
