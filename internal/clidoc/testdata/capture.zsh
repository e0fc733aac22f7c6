# zsh -f capture.zsh FPATH_DIR 'command line': types the command line and
# a TAB into an interactive zsh (on a pseudo-terminal, with compinit and
# the completion functions of FPATH_DIR) and prints the matches the
# completion system offers, one a line.
zmodload zsh/zpty || exit 1
zpty z zsh -f -i || exit 1
zpty -w z "stty -echo; PROMPT=; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-grouped false; zstyle ':completion:*' insert-tab false"
# Record every match added (compadd -O/-A/-D only build lists), then
# print them after completion ran and insert nothing.
zpty -w z 'compprefuncs=( _cap_pre ); _cap_pre() { _cap_m=(); comppostfuncs=( _cap_post ) }'
zpty -w z '_cap_post() { compstate[list]=; compstate[insert]=; local m; for m in "${_cap_m[@]}"; do print -r -- "<"M">$m"; done; print -r -- "<"END">"; }'
zpty -w z 'compadd() { if [[ ${@[(I)-[OAD]*]} -gt 0 ]]; then builtin compadd "$@"; return; fi; local -a _o; builtin compadd -O _o "$@"; _cap_m+=("${_o[@]}"); builtin compadd "$@"; }'
zpty -w z "bindkey '^I' complete-word"
zpty -n -w z "$2"$'\t'
out=""
while zpty -r z line; do
	out+="$line"
	[[ $line == *"<END>"* ]] && break
done
zpty -d z
print -r -- "$out" | tr -d '\r' | grep -ao '<M>[^<]*' | sed 's/<M>//'
