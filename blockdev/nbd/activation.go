package nbd

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// listenFDsStart is the first file descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// ActivationListeners returns the listening sockets passed by systemd
// socket activation (or by a client that starts its server the same way,
// such as `nbdinfo -- [ ddraid serve … ]`): LISTEN_PID must be this
// process and LISTEN_FDS the number of descriptors, which start at 3. It
// returns nil, nil when the process was not started that way. The
// variables are removed from the environment so that child processes do
// not inherit them, and the descriptors are marked close-on-exec.
func ActivationListeners() ([]net.Listener, error) {
	ls, err := activationListeners(os.Getenv, os.Getpid(), listenFDsStart)
	if ls != nil || err != nil {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}
	return ls, err
}

// activationListeners does the work of ActivationListeners with the
// environment, process ID and first descriptor given, for tests.
func activationListeners(getenv func(string) string, pid, first int) ([]net.Listener, error) {
	pidStr, fdsStr := getenv("LISTEN_PID"), getenv("LISTEN_FDS")
	if pidStr == "" || fdsStr == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pidStr); err != nil || p != pid {
		return nil, nil // meant for another process
	}
	n, err := strconv.Atoi(fdsStr)
	if err != nil || n < 1 || n > 1024 {
		return nil, fmt.Errorf("nbd: socket activation: bad LISTEN_FDS %q", fdsStr)
	}
	names := strings.Split(getenv("LISTEN_FDNAMES"), ":")
	var ls []net.Listener
	for i := 0; i < n; i++ {
		fd := first + i
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		l, err := net.FileListener(f)
		f.Close() // FileListener holds its own duplicate
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, fmt.Errorf("nbd: socket activation: descriptor %d (%s) is not a listening socket: %w", fd, name, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}
