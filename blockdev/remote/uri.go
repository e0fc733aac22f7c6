package remote

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPort is the NBD port a URI without one connects to.
const DefaultPort = 10809

// URI is a parsed NBD URI (the NBD project's doc/uri.md): where the server
// is and which export to ask for.
type URI struct {
	// TLS is set for the nbds and nbds+unix schemes.
	TLS bool
	// Network is "tcp" or "unix".
	Network string
	// Addr is "host:port" for TCP and the socket path for unix sockets.
	Addr string
	// Export is the export name; "" asks for the server's default export.
	Export string
}

// schemes maps the URI schemes Open knows to (TLS, unix socket).
var schemes = map[string][2]bool{
	"nbd":       {false, false},
	"nbds":      {true, false},
	"nbd+unix":  {false, true},
	"nbds+unix": {true, true},
}

// IsURI reports whether s is meant as an NBD URI (it starts with one of the
// schemes nbd://, nbds://, nbd+unix:// or nbds+unix://) rather than a file
// path. It does not check the rest; ParseURI does.
func IsURI(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return false
	}
	_, known := schemes[strings.ToLower(scheme)]
	return known
}

// ParseURI parses nbd://host[:port][/export], nbd+unix:///[export]?socket=PATH
// and their TLS forms nbds:// and nbds+unix://. The export name is the
// URI path without its leading slash, unescaped. A unix socket path must be
// absolute. Query parameters other than socket (unix schemes only) are
// refused, so that nothing in a URI is silently ignored.
func ParseURI(s string) (URI, error) {
	if !IsURI(s) {
		return URI{}, fmt.Errorf("remote: %q is not an NBD URI (want nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return URI{}, fmt.Errorf("remote: %w", err)
	}
	kind := schemes[strings.ToLower(u.Scheme)]
	out := URI{TLS: kind[0], Export: strings.TrimPrefix(u.Path, "/")}
	bad := func(why string) (URI, error) { return URI{}, fmt.Errorf("remote: URI %q: %s", s, why) }
	if u.User != nil {
		return bad("user information is not supported")
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return bad("a fragment (#...) is not allowed")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad(err.Error())
	}
	for k := range q {
		if k != "socket" || !kind[1] {
			return bad(fmt.Sprintf("query parameter %q is not supported", k))
		}
	}
	if kind[1] {
		if u.Host != "" && u.Host != "localhost" {
			return bad("a unix socket URI has no host (nbd+unix:///EXPORT?socket=PATH)")
		}
		socks := q["socket"]
		if len(socks) != 1 || socks[0] == "" {
			return bad("needs exactly one socket=PATH parameter")
		}
		if !filepath.IsAbs(socks[0]) {
			return bad("the socket path must be absolute")
		}
		out.Network, out.Addr = "unix", filepath.Clean(socks[0])
		return out, nil
	}
	host := u.Hostname()
	if host == "" {
		return bad("no host")
	}
	if !validHost(host) {
		return bad(fmt.Sprintf("host %q is neither an IP address nor a host name (IPv6 addresses go in brackets: nbd://[::1]:10809/)", host))
	}
	port := u.Port()
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return bad("empty port")
		}
		port = strconv.Itoa(DefaultPort)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad(fmt.Sprintf("port %q is not a number from 1 to 65535", port))
	}
	out.Network, out.Addr = "tcp", net.JoinHostPort(host, port)
	return out, nil
}

// validHost reports whether host is an IP address or a host name
// (letters, digits, '-', '_' and '.').
func validHost(host string) bool {
	if net.ParseIP(host) != nil {
		return true
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// String returns the URI in canonical form: lower-case scheme, the port
// always given, the export escaped. Equal URIs give equal strings, so the
// result serves as a member's identity.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString("nbd")
	if u.TLS {
		b.WriteString("s")
	}
	if u.Network == "unix" {
		b.WriteString("+unix")
	}
	b.WriteString("://")
	if u.Network != "unix" {
		b.WriteString(u.Addr)
	}
	b.WriteString("/")
	b.WriteString(escape(u.Export, false))
	if u.Network == "unix" {
		b.WriteString("?socket=")
		b.WriteString(escape(u.Addr, true))
	}
	return b.String()
}

// escape percent-encodes s for a URI path (query: for the socket
// parameter), keeping '/' and the unreserved characters readable.
func escape(s string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/', c == ':', c == '@', c == ',':
			b.WriteByte(c)
		case !query && (c == '=' || c == '+'):
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// errNeedTLS reports a TLS URI without Config.TLS.
var errNeedTLS = errors.New("a TLS URI (nbds://, nbds+unix://) needs a TLS configuration (Config.TLS: CA, client certificate)")
