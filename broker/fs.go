package broker

import (
	"io/fs"
	"net/http"
)

func adaptorFS(f fs.FS) http.FileSystem { return http.FS(f) }
