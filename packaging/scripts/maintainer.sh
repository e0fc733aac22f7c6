#!/bin/sh
# ddraid maintainer script, one source for the .deb and the .rpm.
# `make package` writes three copies, setting phase (the @-word below) to postinstall,
# preremove or postremove. The arguments differ by format:
#   deb: postinst configure [OLD-VERSION]; prerm remove|upgrade NEW|...;
#        postrm remove|purge|upgrade NEW|...
#   rpm: the number of ddraid packages installed once the transaction is
#        done: %post 1 = install, 2+ = upgrade; %preun/%postun 0 = removal,
#        1+ = upgrade.
# Both are mapped to one action: install, upgrade, remove, purge or none.
# The state directory /var/lib/ddraid holds array metadata and is never
# removed, not even by purge. Units are never restarted: a running serve
# instance keeps its clients until the operator restarts it.
# DPKG_ROOT (dpkg --root --force-script-chrootless) installs into another
# root: only files below it are touched, users and systemd are left alone.
set -e

phase=@PHASE@
root="${DPKG_ROOT:-}"

case "$phase:$1" in
postinstall:configure) if [ -n "$2" ]; then action=upgrade; else action=install; fi ;;
postinstall:1) action=install ;;
postinstall:[2-9] | postinstall:[1-9][0-9]*) action=upgrade ;;
preremove:remove | preremove:0) action=remove ;;
preremove:upgrade | preremove:[1-9]*) action=upgrade ;;
postremove:remove | postremove:0) action=remove ;;
postremove:purge) action=purge ;;
postremove:upgrade | postremove:[1-9]*) action=upgrade ;;
*) action=none ;; # abort-*, failed-upgrade, deconfigure, disappear
esac

say() { echo "ddraid: $*"; }

# systemd_running is true when systemd manages this (real) root.
systemd_running() { [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

ensure_user() {
	if [ -n "$root" ]; then
		say "installing into $root: not creating the ddraid user there"
		return 0
	fi
	# groupadd and useradd (shadow) are on every Debian and rpm system;
	# without them, say what to do instead of failing the install.
	if ! command -v groupadd >/dev/null 2>&1 || ! command -v useradd >/dev/null 2>&1; then
		say "warning: no groupadd/useradd: create the system user and group ddraid by hand"
		return 0
	fi
	if ! getent group ddraid >/dev/null 2>&1; then
		groupadd --system ddraid
	fi
	if ! getent passwd ddraid >/dev/null 2>&1; then
		useradd --system --gid ddraid --home-dir /var/lib/ddraid --no-create-home \
			--shell /usr/sbin/nologin --comment "ddraid daemon" ddraid
	fi
}

ensure_state_dir() {
	mkdir -p "$root/var/lib/ddraid"
	chmod 0750 "$root/var/lib/ddraid"
	if [ -z "$root" ] && getent passwd ddraid >/dev/null 2>&1; then
		chown ddraid:ddraid /var/lib/ddraid
	fi
}

case "$phase:$action" in
postinstall:install)
	ensure_user
	ensure_state_dir
	if systemd_running; then systemctl daemon-reload || true; fi
	say "installed. Configure /etc/ddraid/ddraid.toml, then: systemctl enable --now ddraid.service (agent) or ddraid-serve@NAME.service (serve array NAME)"
	;;
postinstall:upgrade)
	ensure_user
	ensure_state_dir
	running=""
	if systemd_running; then
		systemctl daemon-reload || true
		running=$(systemctl list-units --state=active --plain --no-legend 'ddraid.service' 'ddraid-serve@*.service' 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
	fi
	if [ -n "$running" ]; then
		say "upgraded; these units still run the old binary until restarted: $running"
	else
		say "upgraded"
	fi
	;;
preremove:remove)
	if systemd_running; then
		systemctl stop 'ddraid-serve@*.service' ddraid.service || true
		systemctl disable ddraid.service >/dev/null 2>&1 || true
		say "stopped the ddraid units"
	else
		say "systemd is not running here: no units to stop"
	fi
	;;
postremove:remove)
	if systemd_running; then systemctl daemon-reload || true; fi
	say "removed; array metadata stays in /var/lib/ddraid"
	;;
postremove:purge)
	# dpkg has removed the packaged configuration file; files an operator
	# added (TLS keys) stay, as do the metadata and the user.
	rmdir "$root/etc/ddraid" 2>/dev/null || true
	say "purged; array metadata stays in /var/lib/ddraid and the ddraid user is kept"
	;;
esac
exit 0
