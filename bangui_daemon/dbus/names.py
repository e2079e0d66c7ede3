"""The fixed names of the public contract (shared/spec/dbus-api.md)."""

BUS_NAME = "org.bangui.Daemon1"
OBJECT_PATH = "/org/bangui/Daemon1"
CORE_INTERFACE = "org.bangui.Daemon1"
HISTORY_INTERFACE = "org.bangui.Daemon1.History"
BLOCKLISTS_INTERFACE = "org.bangui.Daemon1.Blocklists"
GEO_INTERFACE = "org.bangui.Daemon1.Geo"
INTERFACE_VERSION = "1.3"  # 1.1: source options, reapplied; 1.2: Error.DownloadFailed
# 1.3: PreviewSource says which lines were invalid (invalid_sample, below_min_count)
FAILED_ERROR = "org.bangui.Daemon1.Error.Failed"
