#!/usr/bin/env bash
# The Debian mirror to make base images from (scripts/image.sh sources this
# file): DEBIAN_MIRROR when set, else the one this machine's apt uses.
#
#   bash scripts/debian-mirror.sh [APT_DIR]   prints it (APT_DIR: /etc/apt)
#
# The first source of Debian's main component, not its security archive,
# in apt's order: APT_DIR/sources.list, then APT_DIR/sources.list.d/*.list
# and *.sources by name; one-line entries (`deb [options] URI SUITE
# COMPONENT...`) and deb822 stanzas (Types:, URIs:, Suites:, Components:,
# Enabled:) alike. A source is Debian's when one of its suites is a Debian
# release's name (or stable, testing...), with or without -updates or
# -backports: a third party's repository with a main component is not.
# Where there is none, it says to set DEBIAN_MIRROR and fails.

debian_mirror() { # [apt directory]
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        printf '%s\n' "$DEBIAN_MIRROR"
        return
    fi
    local apt=${1:-/etc/apt} f found= listed=()
    local files=()
    [ -f "$apt/sources.list" ] && files+=("$apt/sources.list")
    # The rest by name, as apt reads them.
    mapfile -t listed < <(shopt -s nullglob
                          printf '%s\n' "$apt"/sources.list.d/*.list "$apt"/sources.list.d/*.sources |
                              LC_ALL=C sort)
    for f in "${listed[@]}"; do
        [ -f "$f" ] && files+=("$f")
    done
    if [ ${#files[@]} -gt 0 ]; then
        found=$(awk '
            function debian(suite) {
                sub(/-(updates|backports|backports-sloppy|proposed-updates)$/, "", suite)
                return suite ~ /^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)$/
            }
            function has(list, word) {
                gsub(/[ \t]+/, " ", list)
                return index(" " list " ", " " word " ") > 0
            }
            function consider(types, uris, suites, components, enabled,    u, s, n, i, ok) {
                if (tolower(enabled) ~ /^[ \t]*no[ \t]*$/ || !has(types, "deb") || !has(components, "main"))
                    return
                split(uris, u, " ")
                if (u[1] == "" || u[1] ~ /^cdrom:/ || u[1] ~ /-security\/*$/)
                    return
                n = split(suites, s, " ")
                for (i = 1; i <= n; i++) {
                    if (s[i] ~ /-security$/ || s[i] ~ /\/updates$/)
                        return
                    if (debian(s[i]))
                        ok = 1
                }
                if (!ok)
                    return
                sub(/\/+$/, "", u[1])
                print u[1]
                done = 1
                exit
            }
            function flush() {
                if (stanza)
                    consider(field["types"], field["uris"], field["suites"], field["components"],
                             field["enabled"])
                split("", field)
                stanza = 0
                key = ""
            }
            FNR == 1 { flush() }
            { sub(/\r$/, "") }
            FILENAME ~ /\.sources$/ {
                if ($0 ~ /^[ \t]*#/)
                    next
                if ($0 ~ /^[ \t]*$/) {
                    flush()
                    next
                }
                if ($0 ~ /^[ \t]/) {
                    if (key != "")
                        field[key] = field[key] " " $0
                    next
                }
                if (match($0, /^[A-Za-z0-9-]+:/)) {
                    key = tolower(substr($0, 1, RLENGTH - 1))
                    field[key] = substr($0, RLENGTH + 1)
                    stanza = 1
                }
                next
            }
            {
                sub(/#.*/, "")
                gsub(/\[[^]]*\]/, " ")
                if ($1 == "deb") {
                    components = ""
                    for (i = 4; i <= NF; i++)
                        components = components " " $i
                    consider("deb", $2, $3, components, "")
                }
            }
            END { if (!done) flush() }
        ' "${files[@]}")
    fi
    if [ -z "$found" ]; then
        echo "no Debian mirror found in $apt's sources (a deb line or deb822 URIs: of Debian's" \
            "main component, other than its security archive): set DEBIAN_MIRROR to the mirror" \
            "to use (the URL that holds dists/ and pool/), e.g. DEBIAN_MIRROR=http://HOST/debian" >&2
        return 1
    fi
    printf '%s\n' "$found"
}

# Run rather than sourced: print it.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    debian_mirror "$@"
fi
