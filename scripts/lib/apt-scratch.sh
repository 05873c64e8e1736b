# shellcheck shell=bash
# Scratch APT configurations: apt-get and apt-cache reading suites the host does not use (another
# Debian release, backports) without changing what the host's apt sees. Each configuration lives
# in a directory of its own with its own sources, package lists and download cache.
#
#   . "$(dirname "$0")/lib/apt-scratch.sh"
#   apt_scratch_stanza deb "$(apt_scratch_mirror)" forky | apt_scratch_config "$DIR" download
#   APT_CONFIG="$DIR/apt.conf" apt-get update -qq
#   (cd "$DEBS" && APT_CONFIG="$DIR/apt.conf" apt-get download -qq PACKAGE...)
#
# Sourced by scripts that use it; it defines functions only.

# Prints the Debian mirror the host's apt uses: the first URI of a deb822 stanza of
# /etc/apt/sources.list.d/debian.sources with a `deb` type that serves a release suite (one without
# a dash, like bookworm), or with KIND "security", a -security suite; failing that, the first such
# `deb` line of a one-line-style /etc/apt/sources.list; failing that, deb.debian.org.
apt_scratch_mirror() {
  local kind=${1:-main} uri=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    uri="$(awk -v kind="$kind" '
      function flush() {
        if (uris != "" && deb && ok && !done) { print uris; done = 1; exit }
        uris = ""; deb = 0; ok = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uris = $2 }
      tolower($1) == "suites:" {
        for (i = 2; i <= NF; i++)
          if (kind == "security" ? $i ~ /-security$/ : $i !~ /-/) ok = 1
      }
      END { flush() }
    ' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri="$(awk -v kind="$kind" '
      $1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                    s = $(i + 1)
                    if (kind == "security" ? s ~ /-security$/ : s !~ /-/) { print $i; exit } }
    ' /etc/apt/sources.list)"
  fi
  if [ -z "$uri" ]; then
    uri=http://deb.debian.org/debian
    [ "$kind" != security ] || uri=http://deb.debian.org/debian-security
  fi
  printf '%s\n' "$uri"
}

# Prints a deb822 source stanza: TYPES (deb, deb-src or "deb deb-src") URI SUITES..., component
# main, signed by Debian's archive keyring.
apt_scratch_stanza() {
  local types=$1 uri=$2
  shift 2
  printf 'Types: %s\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n' \
    "$types" "$uri" "$*"
}

# Writes DIR/apt.conf, a configuration whose sources are the deb822 stanzas on stdin (none if
# stdin is empty), with its own package lists and download cache in DIR, so that `apt-get update`
# with it never changes what the host's apt sees. MODE is
#  - download: for apt-get update/download/source and apt-cache only. Nothing of the host's
#    /etc/apt is read (its hooks, such as an APT::Update::Post-Invoke that refreshes a software
#    catalog from "the" lists, would run against these lists), the installed-package state is an
#    empty file of DIR, and Valid-Until is not checked (the mirror may be a snapshot);
#  - install: for installing on the host from other suites. The host's configuration, pinning and
#    installed-package state apply (its dpkg hooks should run); only sources, lists and cache
#    are this directory's.
apt_scratch_config() {
  local dir=$1 mode=${2:-download}
  mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
  cat >"$dir/sources.list.d/scratch.sources"
  [ -s "$dir/sources.list.d/scratch.sources" ] || rm "$dir/sources.list.d/scratch.sources"
  {
    cat <<EOC
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$dir/sources.list.d";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
EOC
    case "$mode" in
      download)
        mkdir -p "$dir/parts"
        : >"$dir/status"
        cat <<EOC
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$dir/parts";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$dir/parts";
Dir::State::status "$dir/status";
Acquire::Languages "none";
Acquire::Check-Valid-Until "false";
EOC
        ;;
      install) ;;
      *) printf 'apt_scratch_config: unknown mode %s\n' "$mode" >&2; return 2 ;;
    esac
  } >"$dir/apt.conf"
}
