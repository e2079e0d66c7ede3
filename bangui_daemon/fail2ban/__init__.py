"""fail2ban: the socket client and the read-only DB reader."""
