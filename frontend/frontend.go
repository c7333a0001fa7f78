// Package frontend holds the web pages brokerd serves: the SME storefront,
// the provider console and the regulator dashboard, as static files embedded
// in the binary. They talk to the public API only.
package frontend

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// FS returns the pages, rooted so that index.html is at the top.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err)
	}
	return sub
}
