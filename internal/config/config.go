// Package config gives every flag of a kong command line a key in one TOML
// file and an environment variable, by walking the kong model, so commands
// added later are covered without being listed here.
//
// # Keys
//
// A flag of the root command (a global flag such as --state-dir) is a key at
// the top of the file: state-dir = "/srv/ddraid". A flag of a command is a
// key in that command's table: [serve] listen = ["unix:/run/x.sock"]; a
// nested command's table nests too ([tls.init]). Key names are the long flag
// names. A value is written as on the command line (durations and sizes as
// strings: "30s", "32MiB"); a repeatable flag takes an array.
//
// # Environment
//
// A flag without an env tag gets DDRAID_<SECTION>_<FLAG> (upper case,
// hyphens as underscores): DDRAID_STATE_DIR, DDRAID_SERVE_LISTEN. The command
// path is part of the name so a variable never reaches a same-named flag of
// another command.
//
// # Precedence
//
// Command-line flag, then environment variable, then the file, then the
// built-in default: what a unit's Environment= line or a shell says wins over
// the shared file.
//
// # Not configurable
//
// --help, --version, the flag naming the file itself, hidden flags and the
// flags of hidden commands (benchmark and generator switches), and anything
// tagged noconfig:"". A command (or an ancestor) tagged noconfig:"" is run
// without reading the file: `ddraid config check` must report a broken file,
// not fail on it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	toml "github.com/pelletier/go-toml"
)

// DefaultPath is where the packages install the configuration file.
const DefaultPath = "/etc/ddraid/ddraid.toml"

// EnvPrefix starts every generated environment variable.
const EnvPrefix = "DDRAID"

// noConfig is the struct tag that keeps a flag or command away from the file.
const noConfig = "noconfig"

// Key is one configuration key: one flag of the command line.
type Key struct {
	// Section is the command path of the flag's command, words joined by
	// dots ("serve", "tls.init"); empty for a global flag.
	Section string
	// Name is the flag's long name, e.g. "listen".
	Name string
	// Flag is the flag in the kong model.
	Flag *kong.Flag
}

// String names the key as errors and docs spell it: "serve.listen",
// "state-dir".
func (k Key) String() string {
	if k.Section == "" {
		return k.Name
	}
	return k.Section + "." + k.Name
}

// EnvName is the generated environment variable of a flag named name in a
// command section ("" for a global flag).
func EnvName(section, name string) string {
	parts := []string{EnvPrefix}
	if section != "" {
		parts = append(parts, strings.Split(section, ".")...)
	}
	parts = append(parts, name)
	r := strings.NewReplacer("-", "_", ".", "_")
	return strings.ToUpper(r.Replace(strings.Join(parts, "_")))
}

// Keys returns every configuration key of the application in model order:
// global flags first, then each command's flags.
func Keys(app *kong.Application) []Key {
	var out []Key
	var walk func(n *kong.Node, section string)
	walk = func(n *kong.Node, section string) {
		for _, f := range n.Flags {
			if configurable(f) {
				out = append(out, Key{Section: section, Name: f.Name, Flag: f})
			}
		}
		for _, c := range n.Children {
			if c.Type != kong.CommandNode || c.Hidden || c.Tag.Has(noConfig) {
				continue
			}
			walk(c, joinSection(section, c.Name))
		}
	}
	walk(app.Node, "")
	return out
}

// Sections returns the command sections that hold at least one key, in
// model order, with their one-line help.
func Sections(app *kong.Application) []Section {
	var out []Section
	seen := map[string]bool{}
	var walk func(n *kong.Node, section string)
	walk = func(n *kong.Node, section string) {
		for _, c := range n.Children {
			if c.Type != kong.CommandNode || c.Hidden || c.Tag.Has(noConfig) {
				continue
			}
			s := joinSection(section, c.Name)
			for _, f := range c.Flags {
				if configurable(f) && !seen[s] {
					seen[s] = true
					out = append(out, Section{Name: s, Help: c.Help})
				}
			}
			walk(c, s)
		}
	}
	walk(app.Node, "")
	return out
}

// Section is a command's table in the file.
type Section struct {
	Name string // "serve", "tls.init"
	Help string
}

func joinSection(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

var (
	versionType = reflect.TypeFor[kong.VersionFlag]()
	fileType    = reflect.TypeFor[File]()
)

// configurable says whether a flag gets a key and a generated variable.
func configurable(f *kong.Flag) bool {
	if f.Name == "help" || f.Hidden || f.Tag.Has(noConfig) {
		return false
	}
	if t := f.Target.Type(); t == versionType || t == fileType {
		return false
	}
	return true
}

// Envars is a kong option that gives every configurable flag without an env
// tag its generated variable (see EnvName). Flags with an env tag keep it.
func Envars() kong.Option {
	return kong.PostBuild(func(k *kong.Kong) error {
		for _, key := range Keys(k.Model) {
			f := key.Flag
			if len(f.Envs) > 0 {
				continue
			}
			name := EnvName(key.Section, key.Name)
			f.Envs = append(f.Envs, name)
			f.Tag.Envs = append(f.Tag.Envs, name)
		}
		return nil
	})
}

// Error is one problem in a configuration file.
type Error struct {
	File string // as given; may be empty
	Line int    // 1-based; 0 when unknown
	Key  string // dotted key, e.g. "serve.listen"; may be empty
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:", e.Line)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Key != "" {
		fmt.Fprintf(&b, "%q: ", e.Key)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Values are the flag values a configuration file sets, as command-line
// strings.
type Values map[*kong.Flag]string

// Parse reads a configuration file's contents against the application's
// model. It returns the values it sets and every problem found: TOML syntax,
// unknown keys (each named), keys in the wrong section and values the flag
// would refuse on the command line. name labels the errors. Parse never
// panics, whatever data holds.
func Parse(app *kong.Application, name string, data []byte) (vals Values, errs []error) {
	tree, err := loadTOML(data)
	if err != nil {
		return nil, []error{&Error{File: name, Msg: "TOML: " + err.Error()}}
	}
	keys := map[string]Key{}
	for _, k := range Keys(app) {
		keys[k.String()] = k
	}
	sections := map[string]bool{}
	for _, s := range Sections(app) {
		sections[s.Name] = true
	}
	// A command without configurable flags still names a valid, empty table.
	commands := map[string]bool{}
	var walkCmds func(n *kong.Node, section string)
	walkCmds = func(n *kong.Node, section string) {
		for _, c := range n.Children {
			if c.Type == kong.CommandNode && !c.Hidden {
				s := joinSection(section, c.Name)
				commands[s] = true
				walkCmds(c, s)
			}
		}
	}
	walkCmds(app.Node, "")

	vals = Values{}
	add := func(line int, key, msg string) {
		errs = append(errs, &Error{File: name, Line: line, Key: key, Msg: msg})
	}
	var walk func(t *toml.Tree, section string)
	walk = func(t *toml.Tree, section string) {
		for _, k := range sortedKeys(t) {
			path := joinSection(section, k)
			line := t.GetPositionPath([]string{k}).Line
			v := t.GetPath([]string{k})
			switch v := v.(type) {
			case *toml.Tree:
				if !commands[path] {
					if _, isKey := keys[path]; isKey {
						add(line, path, "is an option, not a table")
					} else {
						add(line, path, "unknown section: no such command")
					}
					continue
				}
				walk(v, path)
				continue
			case []*toml.Tree:
				add(line, path, "arrays of tables are not used by ddraid")
				continue
			}
			key, ok := keys[path]
			if !ok {
				add(line, path, unknownKeyMsg(keys, commands, section, k))
				continue
			}
			s, err := commandLineValue(key.Flag, v)
			if err != nil {
				add(line, path, err.Error())
				continue
			}
			if err := checkValue(key.Flag, s); err != nil {
				add(line, path, err.Error())
				continue
			}
			vals[key.Flag] = s
		}
	}
	walk(tree, "")
	return vals, errs
}

// loadTOML parses data; a panic inside the TOML library on hostile input
// becomes an error.
func loadTOML(data []byte) (tree *toml.Tree, err error) {
	defer func() {
		if r := recover(); r != nil {
			tree, err = nil, fmt.Errorf("cannot parse: %v", r)
		}
	}()
	return toml.LoadBytes(data)
}

func sortedKeys(t *toml.Tree) []string {
	ks := t.Keys()
	slices.SortFunc(ks, func(a, b string) int {
		pa, pb := t.GetPositionPath([]string{a}), t.GetPositionPath([]string{b})
		if pa.Line != pb.Line {
			return pa.Line - pb.Line
		}
		if pa.Col != pb.Col {
			return pa.Col - pb.Col
		}
		return strings.Compare(a, b)
	})
	return ks
}

// unknownKeyMsg explains an unknown key, pointing at the right place when
// the name exists elsewhere.
func unknownKeyMsg(keys map[string]Key, commands map[string]bool, section, name string) string {
	if section != "" {
		if _, ok := keys[name]; ok {
			return fmt.Sprintf("unknown key: %s is a global option; put it above the first [section]", name)
		}
	}
	if commands[joinSection(section, name)] {
		return fmt.Sprintf("unknown key: %s is a command; its options go in a [%s] table", name, joinSection(section, name))
	}
	var elsewhere []string
	for _, k := range keys {
		if k.Name == name && k.Section != section {
			elsewhere = append(elsewhere, "["+k.Section+"]")
		}
	}
	if len(elsewhere) > 0 {
		slices.Sort(elsewhere)
		return "unknown key here; it exists in " + strings.Join(elsewhere, ", ")
	}
	return "unknown key"
}

// commandLineValue turns a TOML value into the string the flag would take
// on the command line, so the file goes through the same parsing (units,
// paths, enums) as a flag.
func commandLineValue(f *kong.Flag, v any) (string, error) {
	if arr, ok := v.([]any); ok {
		if !f.IsSlice() {
			return "", errors.New("takes one value, not an array")
		}
		sep := f.Tag.Sep
		if sep == -1 && len(arr) > 1 {
			return "", errors.New("takes one value per flag; an array of several cannot be passed")
		}
		parts := make([]string, 0, len(arr))
		for _, e := range arr {
			s, err := scalar(e)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		if sep == -1 {
			return strings.Join(parts, ""), nil
		}
		return kong.JoinEscaped(parts, sep), nil
	}
	return scalar(v)
}

func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case uint64:
		return strconv.FormatUint(v, 10), nil
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64), nil
	case time.Time, toml.LocalDate, toml.LocalTime, toml.LocalDateTime:
		return "", errors.New("dates and times are not option values; write durations as strings such as \"30s\"")
	case []any:
		return "", errors.New("nested arrays are not option values")
	default:
		return "", fmt.Errorf("unsupported value of type %T", v)
	}
}

// checkValue parses s with the flag's own mapper into a scratch value and
// checks its enum, as the command line would.
func checkValue(f *kong.Flag, s string) (err error) {
	defer func() {
		if r := recover(); r != nil { // a mapper must not take the process down
			err = fmt.Errorf("invalid value %q: %v", s, r)
		}
	}()
	target := reflect.New(f.Target.Type()).Elem()
	if err := f.Value.Parse(kong.ScanFromTokens(kong.Token{Type: kong.FlagValueToken, Value: s}), target); err != nil {
		return err
	}
	if f.Enum == "" {
		return nil
	}
	enum := f.EnumMap()
	check := func(v reflect.Value) error {
		if got := fmt.Sprint(v.Interface()); !enum[got] {
			return fmt.Errorf("%q is not one of %s", got, strings.Join(f.EnumSlice(), ", "))
		}
		return nil
	}
	if target.Kind() == reflect.Slice {
		for i := range target.Len() {
			if err := check(target.Index(i)); err != nil {
				return err
			}
		}
		return nil
	}
	return check(target)
}

// Load reads and checks the file at path. It returns (nil, nil) when the
// file does not exist and required is false.
func Load(app *kong.Application, path string, required bool) (Values, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !required {
			return nil, nil
		}
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	vals, errs := Parse(app, path, data)
	switch len(errs) {
	case 0:
		return vals, nil
	case 1:
		return nil, errs[0]
	}
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = "  " + e.Error()
	}
	return nil, fmt.Errorf("%d errors in %s (ddraid config check lists them too):\n%s", len(errs), path, strings.Join(lines, "\n"))
}

// Resolver applies the values of a file to the flags not given on the
// command line and not set through their environment variables.
func (v Values) Resolver() kong.Resolver { return resolver(v) }

type resolver Values

// Validate is a no-op: Parse checked every key against the model.
func (resolver) Validate(*kong.Application) error { return nil }

// Resolve returns the file's value for flag unless one of its environment
// variables is set: the environment beats the file.
func (r resolver) Resolve(_ *kong.Context, _ *kong.Path, flag *kong.Flag) (any, error) {
	s, ok := r[flag]
	if !ok {
		return nil, nil
	}
	for _, e := range flag.Envs {
		if _, set := os.LookupEnv(e); set {
			return nil, nil
		}
	}
	return s, nil
}

// File is the type of the flag naming the configuration file (--config).
// Before flags are resolved it loads the file and adds its values. The
// default path may be missing; a path given on the command line or through
// the flag's environment variable must exist.
type File string

// BeforeResolve loads the file (a kong hook).
func (File) BeforeResolve(k *kong.Kong, ctx *kong.Context, trace *kong.Path) error {
	for n := ctx.Selected(); n != nil; n = n.Parent {
		if n.Tag != nil && n.Tag.Has(noConfig) {
			return nil
		}
	}
	path := fmt.Sprint(ctx.FlagValue(trace.Flag))
	vals, err := Load(k.Model, path, explicit(ctx, trace.Flag))
	if err != nil {
		return err
	}
	if vals != nil {
		ctx.AddResolver(vals.Resolver())
	}
	return nil
}

// explicit says whether the flag was given on the command line or through
// its environment variable.
func explicit(ctx *kong.Context, f *kong.Flag) bool {
	for _, p := range ctx.Path {
		if p.Flag == f {
			return true
		}
	}
	for _, e := range f.Envs {
		if _, ok := os.LookupEnv(e); ok {
			return true
		}
	}
	return false
}

// Default renders the commented default file: every key of the model,
// commented out, with its help, its variable and its default. header lines
// are written first, each prefixed with "# ".
func Default(app *kong.Application, header []string) []byte {
	var b bytes.Buffer
	for _, h := range header {
		writeComment(&b, h)
	}
	keys := Keys(app)
	bySection := map[string][]Key{}
	for _, k := range keys {
		bySection[k.Section] = append(bySection[k.Section], k)
	}
	for _, k := range bySection[""] {
		b.WriteString("\n")
		writeKey(&b, k)
	}
	for _, s := range Sections(app) {
		b.WriteString("\n")
		writeComment(&b, strings.Repeat("-", 70))
		writeComment(&b, "ddraid "+strings.ReplaceAll(s.Name, ".", " ")+": "+s.Help)
		fmt.Fprintf(&b, "[%s]\n", s.Name)
		for _, k := range bySection[s.Name] {
			b.WriteString("\n")
			writeKey(&b, k)
		}
	}
	return b.Bytes()
}

func writeKey(b *bytes.Buffer, k Key) {
	f := k.Flag
	writeComment(b, f.Help)
	if f.Enum != "" && !mentionsAll(f.Help, f.EnumSlice()) {
		writeComment(b, "One of: "+strings.Join(f.EnumSlice(), ", ")+".")
	}
	if len(f.Envs) > 0 {
		writeComment(b, "Flag --"+f.Name+", environment "+strings.Join(f.Envs, ", ")+".")
	}
	fmt.Fprintf(b, "#%s = %s\n", k.Name, tomlDefault(f))
}

// mentionsAll says whether help already names every word.
func mentionsAll(help string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(help, w) {
			return false
		}
	}
	return true
}

// writeComment writes text as "# " lines wrapped near 78 columns.
func writeComment(b *bytes.Buffer, text string) {
	const width = 76
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			fmt.Fprintf(b, "# %s\n", line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line == "" {
		b.WriteString("#\n")
		return
	}
	fmt.Fprintf(b, "# %s\n", line)
}

// tomlDefault writes a flag's default as a TOML value of the shape the file
// takes for it.
func tomlDefault(f *kong.Flag) string {
	def := f.Default
	if f.IsSlice() {
		var parts []string
		if def != "" {
			for _, p := range kong.SplitEscaped(def, f.Tag.Sep) {
				parts = append(parts, tomlString(p))
			}
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	switch f.Target.Kind() {
	case reflect.Bool:
		if def == "" {
			return "false"
		}
		return def
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if def == "" {
			def = "0"
		}
		if _, err := strconv.ParseInt(def, 10, 64); err == nil && f.Target.Type() != reflect.TypeFor[time.Duration]() {
			return def
		}
		return tomlString(def)
	}
	return tomlString(def)
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
