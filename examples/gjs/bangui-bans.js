#!/usr/bin/gjs
// Live bans from bangui-daemon through GLib's own D-Bus stack (Gio.DBusConnection),
// the way a GNOME Shell extension or any GTK program would follow them.
//
//   gjs bangui-bans.js [COUNT]     print the status, then one line per new ban;
//                                  exit after COUNT bans (default: run until killed)
//
// Any local user may run it: the system bus policy lets everybody receive the
// daemon's signals and call its read methods. DBUS_SYSTEM_BUS_ADDRESS is honoured.

imports.gi.versions.Gio = '2.0';
imports.gi.versions.GLib = '2.0';
const {Gio, GLib} = imports.gi;

const NAME = 'org.bangui.Daemon1';
const PATH = '/org/bangui/Daemon1';
const CORE = 'org.bangui.Daemon1';
const GEO = 'org.bangui.Daemon1.Geo';
const TIMEOUT_MS = 5000;

const limit = ARGV.length > 0 ? parseInt(ARGV[0], 10) : 0;
const bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, null);
const loop = new GLib.MainLoop(null, false);
let seen = 0;

// One method call; `done(value)` gets the reply's first out-arg, unpacked, or null.
function call(iface, method, args, replyType, done) {
    bus.call(NAME, PATH, iface, method, args, new GLib.VariantType(replyType),
        Gio.DBusCallFlags.NONE, TIMEOUT_MS, null, (conn, res) => {
            try {
                done(conn.call_finish(res).recursiveUnpack()[0]);
            } catch (e) {
                printerr(`${method}: ${e.message}`);
                done(null);
            }
        });
}

bus.signal_subscribe(NAME, CORE, 'BanAdded', PATH, null, Gio.DBusSignalFlags.NONE,
    (conn, sender, path, iface, signal, params) => {
        const [jail, ip, timeofban, bantime] = params.deepUnpack();
        // The daemon resolves a new ban before it signals it: ask for the answer.
        call(GEO, 'LookupIp', new GLib.Variant('(s)', [ip]), '(a{sv})', geo => {
            const where = geo ? [geo.country_code, geo.asn].filter(x => x).join(' ') : '';
            const lasts = bantime < 0 ? 'for ever' : `for ${bantime} s`;
            print(`ban ${jail} ${ip}${where ? ` (${where})` : ''} ${lasts}`);
            seen += 1;
            if (limit > 0 && seen >= limit)
                loop.quit();
        });
    });

call(CORE, 'GetStatus', null, '(a{sv})', status => {
    if (status === null) {
        printerr('bangui-daemon is not answering');
    } else {
        print(`bangui-daemon ${status.version}: ${status.active_bans} active bans ` +
              `in ${status.jails.length} jails`);
    }
    print('watching for bans');
});

loop.run();
