#!/bin/sh
# make install / make uninstall: idempotent; DESTDIR stages into another root (tests, packaging).
#   install.sh install            venv in $PREFIX, package, unit, sysusers/tmpfiles, example config
#   install.sh uninstall [purge]  removes what install made; keeps /etc/boxtel and /var/lib/boxtel unless purge
set -eu

action=${1:?usage: install.sh install|uninstall [purge]}
purge=${2:-}
src=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/boxtel}
PYTHON=${PYTHON:-python3}

root=$DESTDIR
prefix=$root$PREFIX
unitdir=$root/etc/systemd/system
sysusersdir=$root/etc/sysusers.d
tmpfilesdir=$root/etc/tmpfiles.d
confdir=$root/etc/boxtel
statedir=$root/var/lib/boxtel
docdir=$prefix/share/doc/boxtel

# Only a real install on a running systemd talks to systemd; a staged root is just files.
live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

install_files() {
    if [ ! -x "$prefix/bin/python" ]; then
        echo "creating the virtual environment in $prefix"
        "$PYTHON" -m venv "$prefix"
    fi
    echo "installing boxtel into $prefix"
    "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "$src"  # not bin/pip: relocated
    if [ -n "$DESTDIR" ]; then
        relocate
    fi

    install -d -m 0755 "$unitdir" "$sysusersdir" "$tmpfilesdir" "$docdir"
    install -m 0644 "$src/systemd/boxtel.service" "$unitdir/boxtel.service"
    install -m 0644 "$src/systemd/boxtel.sysusers.conf" "$sysusersdir/boxtel.conf"
    install -m 0644 "$src/systemd/boxtel.tmpfiles.conf" "$tmpfilesdir/boxtel.conf"
    install -m 0644 "$src/README.md" "$src"/docs/*.md "$docdir/"

    install -d -m 0750 "$confdir"
    install -m 0644 "$src/config/agent.example.toml" "$confdir/agent.example.toml"
    if [ -e "$confdir/agent.toml" ]; then
        echo "kept your $confdir/agent.toml"
    else
        install -m 0640 "$src/config/agent.example.toml" "$confdir/agent.toml"
        echo "wrote $confdir/agent.toml from the example: edit it before starting the service"
    fi

    if live_systemd; then
        systemd-sysusers "$sysusersdir/boxtel.conf"
        systemd-tmpfiles --create "$tmpfilesdir/boxtel.conf"
        chgrp boxtel "$confdir/agent.toml" 2>/dev/null || true
        systemctl daemon-reload
    fi
    cat <<NEXT

boxtel is installed. Next steps (docs: $PREFIX/share/doc/boxtel/deploy.md):
  1. edit /etc/boxtel/agent.toml: box id and site, the broker, your drivers
  2. $PREFIX/bin/boxtel check-config -c /etc/boxtel/agent.toml
  3. sudo -u boxtel $PREFIX/bin/boxtel doctor -c /etc/boxtel/agent.toml
  4. systemctl enable --now boxtel && journalctl -u boxtel -f
NEXT
}

# A staged venv names its staged path ($DESTDIR$PREFIX) in its scripts' #! lines, activate scripts and
# pyvenv.cfg, and in the source paths compiled into its .pyc files: rewrite them to $PREFIX, so the
# tree works once copied to / (as a package build needs).
relocate() {
    for file in "$prefix"/bin/* "$prefix/pyvenv.cfg"; do
        if [ -f "$file" ] && [ ! -L "$file" ] && grep -qsF "$prefix" "$file"; then
            sed -i "s|$prefix|$PREFIX|g" "$file"
        fi
    done
    "$prefix/bin/python" -m compileall -q -f -s "$root" -p / "$prefix/lib" >/dev/null
}

# Removes what exists of $1 and says so; nothing is said about what was not there.
remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf "$1"
        echo "removed $1"
        removed=yes
    fi
}

uninstall_files() {
    removed=
    if live_systemd && systemctl list-unit-files boxtel.service >/dev/null 2>&1; then
        systemctl disable --now boxtel.service 2>/dev/null || true
    fi
    remove "$unitdir/boxtel.service"
    remove "$sysusersdir/boxtel.conf"
    remove "$tmpfilesdir/boxtel.conf"
    remove "$prefix"
    if live_systemd; then
        systemctl daemon-reload
    fi
    if [ "$purge" = purge ]; then
        remove "$confdir"
        remove "$statedir"
    else
        for kept in "$confdir" "$statedir"; do
            if [ -e "$kept" ]; then
                echo "kept $kept (make uninstall PURGE=1 removes it)"
            fi
        done
    fi
    if [ -z "$removed" ]; then
        echo "boxtel is not installed here: nothing to remove"
    fi
}

case $action in
    install) install_files ;;
    uninstall) uninstall_files ;;
    *) echo "usage: install.sh install|uninstall [purge]" >&2; exit 64 ;;
esac
