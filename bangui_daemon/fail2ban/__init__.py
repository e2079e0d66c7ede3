"""fail2ban: the control-socket client and the read-only readers of its sqlite DB
(new ban rows, change wake-ups, the `data` column), nothing that decides."""
