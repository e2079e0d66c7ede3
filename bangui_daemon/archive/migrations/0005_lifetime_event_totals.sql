-- Events ever archived per (jail, action, origin): the history purge deletes rows but
-- never these counts, so the Prometheus counters built on them only ever grow, across
-- purges and restarts. Kept by triggers; a handful of rows, read on every scrape.
CREATE TABLE ban_event_totals (
    jail   TEXT    NOT NULL,
    action TEXT    NOT NULL,
    origin TEXT    NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (jail, action, origin)
) WITHOUT ROWID;

INSERT INTO ban_event_totals (jail, action, origin, events)
SELECT jail, action, origin, sum(events) FROM ban_event_hours GROUP BY 1, 2, 3;

CREATE TRIGGER ban_events_total_insert AFTER INSERT ON ban_events BEGIN
    INSERT INTO ban_event_totals (jail, action, origin, events)
    VALUES (NEW.jail, NEW.action, NEW.origin, 1)
    ON CONFLICT DO UPDATE SET events = events + 1;
END;

-- An event moved to another jail, action or origin is counted there instead.
CREATE TRIGGER ban_events_total_update AFTER UPDATE OF jail, action, origin ON ban_events
WHEN OLD.jail != NEW.jail OR OLD.action != NEW.action OR OLD.origin != NEW.origin BEGIN
    UPDATE ban_event_totals SET events = events - 1
    WHERE jail = OLD.jail AND action = OLD.action AND origin = OLD.origin;
    INSERT INTO ban_event_totals (jail, action, origin, events)
    VALUES (NEW.jail, NEW.action, NEW.origin, 1)
    ON CONFLICT DO UPDATE SET events = events + 1;
END;
