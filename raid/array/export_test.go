package array

// crash stops the array the way a SIGKILL leaves it on disk: the worker
// and the bitmap stop, the member files are closed (their writes are in
// the page cache, so they survive as they would a process kill), nothing
// is flushed and no mark is cleared.
func (a *Array) crash() {
	a.cancel()
	<-a.done
	if a.bm != nil {
		a.bm.Close()
		releaseStore(a.storeDir)
	}
	a.asm.Close()
}
