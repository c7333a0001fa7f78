package broker

import _ "embed"

// OpenAPI is the public contract as an OpenAPI 3 document.
//
//go:embed openapi.json
var OpenAPI []byte
