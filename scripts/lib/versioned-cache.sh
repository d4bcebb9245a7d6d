# Caches of Debian packages kept as one folder per package version (.cache/<what>/<version>/).
# Sourced, not run.
#
#   newest_cached CACHE MARKER
#       Prints the folder of the newest version under CACHE whose MARKER file exists and is not
#       empty (a folder is published whole, so the marker means complete); returns 1 when none is.
newest_cached() {
  local cache=$1 marker=$2 best="" v d
  for d in "$cache"/*/; do
    [[ -s "$d/$marker" ]] || continue
    v="$(basename "$d")"
    if [[ -z $best ]] || dpkg --compare-versions "$v" gt "$best"; then best="$v"; fi
  done
  [[ -n $best ]] && echo "$cache/$best"
}
