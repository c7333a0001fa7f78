//go:build !linux

package main

import (
	"context"
	"errors"
	"net"
)

// The epoll reader is Linux only; elsewhere --reader go is the one there is.

type epollReader struct{}

func newEpollReader() (*epollReader, error) {
	return nil, errors.New("--reader epoll needs Linux; use --reader go")
}

func (r *epollReader) add(fd int, sub *subscriber, leftover []byte) error {
	return errors.ErrUnsupported
}

func (r *epollReader) closeAll() {}

func rawDial(ctx context.Context, base, path string, local net.Addr) (int, []byte, error) {
	return -1, nil, errors.ErrUnsupported
}

func closeFD(fd int) error { return errors.ErrUnsupported }
