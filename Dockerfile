# syntax=docker/dockerfile:1
# brokerd: static binary on distroless, running as nonroot (uid 65532).
# Build: docker build -t computebroker/brokerd .   (or docker compose up --build)

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -ldflags="-s -w" -o /out/brokerd ./cmd/brokerd \
 && mkdir -p /out/var

FROM gcr.io/distroless/static-debian12:nonroot
WORKDIR /app
COPY --from=build /out/brokerd /app/brokerd
# brokerd writes ./var/admin.token when BROKER_ADMIN_TOKEN is unset.
COPY --from=build --chown=65532:65532 /out/var /app/var
ENV BROKER_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/app/brokerd"]
