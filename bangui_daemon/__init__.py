"""bangui-daemon: fail2ban observable and scriptable over the system D-Bus."""

__version__ = "0.1.0"
