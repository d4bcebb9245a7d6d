# An apt of our own under .cache/, for the scripts that fetch Debian packages or sources for the
# tests: its own sources list, lists and downloads, so the system's apt configuration and package
# database are never touched and no root is needed. Sourced, not run.
#
#   private_apt_init DIR LINE_PREFIX [ARCH]
#       DIR          where the state lives (created)
#       LINE_PREFIX  the start of each sources line: "deb-src" or "deb [arch=arm64]" …
#       ARCH         for binary packages of a foreign architecture: apt then knows no installed
#                    packages (status /dev/null) and takes no lock
#     Sets APT_OPTS (pass to apt-get / apt-cache) and writes the sources list.
#   private_apt_refresh LIST_GLOB FORCE
#       Refreshes the lists when FORCE is 1 or none matching LIST_GLOB (e.g. '*Sources*') is under a
#       week old; an update that fails keeps the lists of an earlier run. Returns 1 when there are
#       no lists at all.
#   The caller defines say() and die().

private_apt_init() {
  local dir=$1 prefix=$2 arch=${3:-}
  PRIVATE_APT_DIR=$dir
  APT_OPTS=(
    -o "Dir::Etc::SourceList=$dir/sources.list"
    -o "Dir::Etc::SourceParts=$dir/sources.list.d"
    -o "Dir::Etc::Preferences=$dir/preferences"
    -o "Dir::Etc::PreferencesParts=$dir/preferences.d"
    -o "Dir::State::Lists=$dir/lists"
    -o "Dir::Cache=$dir/cache"
    # Downloads land in our own folder, which the unprivileged _apt user may not be able to
    # enter; fetching as the caller avoids apt's "download is performed unsandboxed" warning.
    -o "APT::Sandbox::User=$(id -un)"
  )
  if [[ -n $arch ]]; then
    APT_OPTS+=(-o "Dir::State::status=/dev/null" -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
      -o "Debug::NoLocking=1")
  fi
  mkdir -p "$dir"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
  touch "$dir/preferences"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts
  # "deb [arch=arm64]" gains the keyring inside its brackets; a bare "deb-src" gets brackets of its own.
  if [[ $prefix == *"["*"]" ]]; then
    opts="${prefix%]} signed-by=$keyring]"
  else
    opts="$prefix [signed-by=$keyring]"
  fi
  cat >"$dir/sources.list" <<SOURCES
$opts http://deb.debian.org/debian bookworm main
$opts http://deb.debian.org/debian bookworm-updates main
$opts http://deb.debian.org/debian-security bookworm-security main
SOURCES
}

private_apt_lists_present() { compgen -G "$PRIVATE_APT_DIR/lists/$1" >/dev/null; }

private_apt_refresh() {
  local glob=$1 force=$2
  local fresh
  fresh="$(find "$PRIVATE_APT_DIR/lists" -maxdepth 1 -name "$glob" -mtime -7 -print -quit)"
  if [[ $force == 1 || -z $fresh ]]; then
    say "refreshing the private package lists in $PRIVATE_APT_DIR"
    if ! apt-get "${APT_OPTS[@]}" -qq update >&2; then
      private_apt_lists_present "$glob" || die "apt-get update failed and there are no lists from an earlier run"
      say "apt-get update failed; using the lists from an earlier run"
    fi
  fi
  private_apt_lists_present "$glob"
}
