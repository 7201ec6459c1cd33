# bench-section.sh - sourced by the bench scripts: write_section NAME TEXT puts
# TEXT (which starts with <!-- bench:NAME:start --> and ends with
# <!-- bench:NAME:end -->) into docs/benchmarks.md, replacing the previous run's
# section of that name and leaving the other sections alone.
write_section() {
    local name=$1 section=$2 file=docs/benchmarks.md
    [ -f "$file" ] || printf '# Benchmarks\n\nFigures measured on the machines this project is built on; each section says how.\n' >"$file"
    python3 - "$file" "$name" "$section" <<'PY'
import re, sys
path, name, section = sys.argv[1:4]
text = open(path).read()
pat = re.compile(r"<!-- bench:%s:start -->.*?<!-- bench:%s:end -->" % (name, name), re.S)
text = pat.sub(lambda m: section, text) if pat.search(text) else text.rstrip() + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
}
