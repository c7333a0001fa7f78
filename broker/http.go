package broker

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"computebroker/market"
)

// ServerConfig is what the HTTP layer needs besides the Service.
type ServerConfig struct {
	// Ready reports whether the stores answer; /readyz is 503 while it errs.
	Ready func(ctx context.Context) error
	// Limiter shares rate limits between brokerd processes; nil: no limits.
	Limiter *Limiter
	// Frontend is served at /; nil: none.
	Frontend fs.FS
	// OpenAPI is the contract served at /api/v1/openapi.json.
	OpenAPI []byte
	Logger  *slog.Logger
	// Extra mounts more routes (the WebSocket gateway) on the app.
	Extra func(app *fiber.App, auth fiber.Handler)
}

// statusOf maps error codes to HTTP statuses: the one place that does.
func statusOf(c market.Code) int {
	switch c {
	case market.CodeInvalidArgument:
		return fiber.StatusBadRequest
	case market.CodeUnauthenticated:
		return fiber.StatusUnauthorized
	case market.CodeForbidden:
		return fiber.StatusForbidden
	case market.CodeNotFound:
		return fiber.StatusNotFound
	case market.CodeConflict, market.CodeNoMatch:
		return fiber.StatusConflict
	case market.CodeRateLimited:
		return fiber.StatusTooManyRequests
	case market.CodeUnavailable:
		return fiber.StatusServiceUnavailable
	}
	return fiber.StatusInternalServerError
}

type errorBody struct {
	Error struct {
		Code    market.Code    `json:"code"`
		Message string         `json:"message"`
		Reasons map[string]int `json:"reasons,omitempty"`
	} `json:"error"`
}

// NewApp builds the fiber app serving the public API.
func NewApp(svc *Service, cfg ServerConfig) *fiber.App {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	app := fiber.New(fiber.Config{
		AppName:               "brokerd",
		DisableStartupMessage: true,
		Immutable:             true, // request values may outlive handlers (logs, goroutines)
		BodyLimit:             1 << 20,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		IdleTimeout:           120 * time.Second,
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			var fe *fiber.Error
			var me *market.Error
			switch {
			case errors.As(err, &me):
			case errors.As(err, &fe):
				code := market.CodeInternal
				switch {
				case fe.Code == fiber.StatusNotFound || fe.Code == fiber.StatusMethodNotAllowed:
					code = market.CodeNotFound
				case fe.Code == fiber.StatusRequestEntityTooLarge:
					code = market.CodeInvalidArgument
				case fe.Code < 500:
					code = market.CodeInvalidArgument
				}
				me = &market.Error{Code: code, Message: fe.Message}
			default:
				me = &market.Error{Code: market.CodeInternal, Message: "internal error", Err: err}
			}
			if me.Code == market.CodeInternal || me.Code == market.CodeUnavailable {
				log.Error("request failed", "method", c.Method(), "path", c.Path(), "code", me.Code, "err", err)
			}
			if me.Code == market.CodeRateLimited && c.GetRespHeader(fiber.HeaderRetryAfter) == "" {
				c.Set(fiber.HeaderRetryAfter, "1")
			}
			var body errorBody
			body.Error.Code, body.Error.Message, body.Error.Reasons = me.Code, me.Message, me.Reasons
			return c.Status(statusOf(me.Code)).JSON(body)
		},
	})
	h := &handlers{svc: svc, cfg: cfg}
	app.Use(h.observe)
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"status": "ok"}) })
	app.Get("/readyz", h.readyz)
	app.Get("/metrics", adaptor.HTTPHandler(promhttp.HandlerFor(svc.metrics.Registry, promhttp.HandlerOpts{})))

	api := app.Group("/api/v1")
	anon := h.anonymous
	auth := h.authenticate
	api.Get("/openapi.json", anon, func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(cfg.OpenAPI)
	})
	api.Get("/resource-classes", anon, h.resourceClasses)
	api.Get("/regions", anon, h.regions)
	api.Get("/offers", anon, h.listOffers)

	api.Post("/accounts", auth, h.createAccount)
	api.Post("/accounts/:id/rotate-token", auth, h.rotateToken)
	api.Post("/accounts/:id/revoke", auth, h.revoke)
	api.Get("/providers", auth, h.providers)
	api.Post("/providers/:id/approve", auth, h.providerStatus(market.ProviderApproved))
	api.Post("/providers/:id/suspend", auth, h.providerStatus(market.ProviderSuspended))
	api.Post("/offers", auth, h.createOffer)
	api.Get("/offers/:id", anon, h.getOffer)
	api.Patch("/offers/:id", auth, h.patchOffer)
	api.Delete("/offers/:id", auth, h.deleteOffer)
	api.Post("/programs", auth, h.createProgram)
	api.Post("/vouchers", auth, h.issueVoucher)
	api.Get("/vouchers", auth, h.vouchers)
	api.Post("/quotes", auth, h.quote)
	api.Post("/orders", auth, h.placeOrder)
	api.Get("/orders", auth, h.orders)
	api.Get("/orders/:id", auth, h.getOrder)
	api.Post("/orders/:id/cancel", auth, h.cancelOrder)
	api.Get("/leases", auth, h.leases)
	api.Post("/leases/:id/start", auth, h.leaseStatus(market.LeaseStarted))
	api.Post("/leases/:id/complete", auth, h.leaseStatus(market.LeaseCompleted))
	api.Post("/leases/:id/fail", auth, h.leaseStatus(market.LeaseFailed))
	api.Get("/analytics/trades", auth, h.trades)
	api.Get("/analytics/price-index", auth, h.priceIndex)
	api.Get("/analytics/ohlc", auth, h.ohlc)
	api.Get("/analytics/concentration", auth, h.concentration)
	api.Get("/analytics/subsidies", auth, h.subsidies)
	api.Get("/analytics/alerts", auth, h.alerts)
	api.Get("/analytics/budgets", auth, h.budgets)
	api.Get("/analytics/capacity", auth, h.capacity)
	if cfg.Extra != nil {
		cfg.Extra(app, auth)
	}
	api.Use(func(c *fiber.Ctx) error {
		return market.Errorf(market.CodeNotFound, "no such endpoint: %s %s", c.Method(), c.Path())
	})
	if cfg.Frontend != nil {
		app.Use("/", filesystem.New(filesystem.Config{Root: adaptorFS(cfg.Frontend), Index: "index.html"}))
	}
	return app
}

type handlers struct {
	svc *Service
	cfg ServerConfig
}

const callerKey = "caller"

func caller(c *fiber.Ctx) market.Account {
	a, _ := c.Locals(callerKey).(market.Account)
	return a
}

func (h *handlers) observe(c *fiber.Ctx) error {
	start := time.Now()
	err := c.Next()
	if err != nil {
		if herr := c.App().ErrorHandler(c, err); herr != nil {
			c.Status(fiber.StatusInternalServerError)
		}
	}
	route := c.Route().Path
	if c.Response().StatusCode() == fiber.StatusNotFound && route == "/" {
		route = "unmatched"
	}
	h.svc.metrics.observe(route, c.Method(), c.Response().StatusCode(), time.Since(start))
	return nil
}

func (h *handlers) readyz(c *fiber.Ctx) error {
	if h.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
		defer cancel()
		if err := h.cfg.Ready(ctx); err != nil {
			return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "unavailable", "error": err.Error()})
		}
	}
	return c.JSON(fiber.Map{"status": "ready"})
}

func (h *handlers) limit(c *fiber.Ctx, key string, anon bool) error {
	if h.cfg.Limiter == nil {
		return nil
	}
	ok, retry := h.cfg.Limiter.Allow(c.UserContext(), key, anon)
	if !ok {
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int(retry.Seconds()+0.999)))
		return market.Errorf(market.CodeRateLimited, "rate limit exceeded; retry after %s", retry.Round(time.Millisecond))
	}
	return nil
}

func (h *handlers) anonymous(c *fiber.Ctx) error {
	if err := h.limit(c, "ip:"+c.IP(), true); err != nil {
		return err
	}
	return c.Next()
}

func bearer(c *fiber.Ctx) string {
	v := c.Get(fiber.HeaderAuthorization)
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

func (h *handlers) authenticate(c *fiber.Ctx) error {
	token := bearer(c)
	if token == "" {
		token = c.Query("token") // the provider stream may pass it in the query
	}
	if token == "" {
		if err := h.limit(c, "ip:"+c.IP(), true); err != nil {
			return err
		}
		return market.Errorf(market.CodeUnauthenticated, "missing bearer token (Authorization: Bearer <token>)")
	}
	a, err := h.svc.Authenticate(c.UserContext(), token)
	if err != nil {
		if lerr := h.limit(c, "ip:"+c.IP(), true); lerr != nil {
			return lerr
		}
		return err
	}
	if err := h.limit(c, "acct:"+a.ID, false); err != nil {
		return err
	}
	c.Locals(callerKey, a)
	return c.Next()
}

// decode reads a JSON object strictly: unknown fields, trailing data and
// wrong types are invalid_argument.
func decode(c *fiber.Ctx, v any) error {
	body := c.Body()
	if len(bytes.TrimSpace(body)) == 0 {
		return market.Invalid("the request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return market.Invalid("%s", describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return market.Invalid("the request body must hold exactly one JSON object")
	}
	return nil
}

func describeJSONError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var pe *time.ParseError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		if te.Field == "" {
			return "the request body must be a JSON object"
		}
		return fmt.Sprintf("field %q must be %s, got %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &pe):
		return fmt.Sprintf("times must be RFC 3339 (2026-01-02T15:04:05Z): %v", pe)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of input"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	return "malformed JSON: " + err.Error()
}

func jsonKind(k string) string {
	switch k {
	case "int64", "int", "int32":
		return "a whole number in range"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice":
		return "an array"
	case "map", "struct":
		return "an object"
	case "ptr":
		return "of the documented type"
	}
	return "of the documented type"
}

func queryInt(c *fiber.Ctx, name string) (int, error) {
	s := c.Query(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, market.Invalid("%s must be a whole number", name)
	}
	return n, nil
}

func queryTime(c *fiber.Ctx, name string) (time.Time, error) {
	s := c.Query(name)
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, market.Invalid("%s must be an RFC 3339 time", name)
	}
	return t, nil
}

// ---- handlers ----

func (h *handlers) resourceClasses(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"resource_classes": h.svc.cfg.Catalog.Classes})
}

func (h *handlers) regions(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"regions": h.svc.cfg.Catalog.Regions})
}

type accountRequest struct {
	Role             market.Role `json:"role"`
	Name             string      `json:"name"`
	Region           string      `json:"region"`
	Size             string      `json:"size"`
	Startup          bool        `json:"startup"`
	RelatedPartyKeys []string    `json:"related_party_keys"`
	Certifications   []string    `json:"certifications"`
}

func (h *handlers) createAccount(c *fiber.Ctx) error {
	var r accountRequest
	if err := requireRole(caller(c), market.RoleAdmin); err != nil {
		return err
	}
	if err := decode(c, &r); err != nil {
		return err
	}
	a, token, err := h.svc.CreateAccount(c.UserContext(), caller(c), NewAccount(r))
	if err != nil {
		return err
	}
	v := viewAccount(a)
	v.Token = token
	return c.Status(fiber.StatusCreated).JSON(v)
}

func (h *handlers) rotateToken(c *fiber.Ctx) error {
	token, err := h.svc.RotateToken(c.UserContext(), caller(c), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"token": token})
}

func (h *handlers) revoke(c *fiber.Ctx) error {
	if err := h.svc.Revoke(c.UserContext(), caller(c), c.Params("id")); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"id": c.Params("id"), "revoked": true})
}

func (h *handlers) providers(c *fiber.Ctx) error {
	ps, err := h.svc.Providers(c.UserContext())
	if err != nil {
		return err
	}
	out := make([]accountView, len(ps))
	for i, p := range ps {
		out[i] = viewAccount(p)
		if caller(c).Role != market.RoleAdmin && caller(c).Role != market.RoleRegulator {
			out[i].RelatedPartyKeys = []string{} // only the operator and regulators see them
		}
	}
	return c.JSON(fiber.Map{"providers": out})
}

func (h *handlers) providerStatus(st market.ProviderStatus) fiber.Handler {
	return func(c *fiber.Ctx) error {
		a, err := h.svc.SetProviderStatus(c.UserContext(), caller(c), c.Params("id"), st)
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"id": a.ID, "status": a.Status})
	}
}

type offerRequest struct {
	ResourceClass string         `json:"resource_class"`
	Region        string         `json:"region"`
	Units         int64          `json:"units"`
	Price         string         `json:"price"`
	MaxHours      int64          `json:"max_hours"`
	Specs         map[string]any `json:"specs"`
}

func (h *handlers) createOffer(c *fiber.Ctx) error {
	if err := requireRole(caller(c), market.RoleProvider); err != nil {
		return err
	}
	var r offerRequest
	if err := decode(c, &r); err != nil {
		return err
	}
	o, err := h.svc.CreateOffer(c.UserContext(), caller(c), NewOfferRequest(r))
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(viewOffer(o))
}

func (h *handlers) getOffer(c *fiber.Ctx) error {
	o, err := h.svc.offers.Offer(c.UserContext(), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(viewOffer(o))
}

type patchRequest struct {
	Price *string `json:"price"`
	Units *int64  `json:"units"`
}

func (h *handlers) patchOffer(c *fiber.Ctx) error {
	if err := requireRole(caller(c), market.RoleProvider); err != nil {
		return err
	}
	var r patchRequest
	if err := decode(c, &r); err != nil {
		return err
	}
	o, err := h.svc.UpdateOffer(c.UserContext(), caller(c), c.Params("id"), OfferPatch(r))
	if err != nil {
		return err
	}
	return c.JSON(viewOffer(o))
}

func (h *handlers) deleteOffer(c *fiber.Ctx) error {
	if err := h.svc.DeleteOffer(c.UserContext(), caller(c), c.Params("id")); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (h *handlers) listOffers(c *fiber.Ctx) error {
	limit, err := queryInt(c, "limit")
	if err != nil {
		return err
	}
	if c.Query("limit") != "" && limit < 1 {
		return market.Invalid("limit must be from 1 to 500")
	}
	offers, next, err := h.svc.ListOffers(c.UserContext(), OfferQuery{
		ResourceClass: c.Query("resource_class"), Region: c.Query("region"), MaxPrice: c.Query("max_price"),
		Cursor: c.Query("cursor"), Limit: limit,
	})
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"offers": viewOffers(offers), "next_cursor": next})
}

type programRequest struct {
	Name                string    `json:"name"`
	Rate                string    `json:"rate"`
	DomesticRate        string    `json:"domestic_rate"`
	StartupRate         string    `json:"startup_rate"`
	PerOrderCap         string    `json:"per_order_cap"`
	AnnualCapPerCompany string    `json:"annual_cap_per_company"`
	Budget              string    `json:"budget"`
	ValidFrom           time.Time `json:"valid_from"`
	ValidTo             time.Time `json:"valid_to"`
	ResourceClasses     []string  `json:"resource_classes"`
	Regions             []string  `json:"regions"`
	Providers           []string  `json:"providers"`
}

func (h *handlers) createProgram(c *fiber.Ctx) error {
	if err := requireRole(caller(c), market.RoleRegulator); err != nil {
		return err
	}
	var r programRequest
	if err := decode(c, &r); err != nil {
		return err
	}
	p, err := h.svc.CreateProgram(c.UserContext(), caller(c), NewProgram(r))
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(viewProgram(p))
}

type voucherRequest struct {
	ProgramID string    `json:"program_id"`
	HolderID  string    `json:"holder_id"`
	Amount    string    `json:"amount"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (h *handlers) issueVoucher(c *fiber.Ctx) error {
	if err := requireRole(caller(c), market.RoleRegulator); err != nil {
		return err
	}
	var r voucherRequest
	if err := decode(c, &r); err != nil {
		return err
	}
	v, err := h.svc.IssueVoucher(c.UserContext(), caller(c), NewVoucher(r))
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(viewVoucher(v))
}

func (h *handlers) vouchers(c *fiber.Ctx) error {
	vs, err := h.svc.Vouchers(c.UserContext(), caller(c))
	if err != nil {
		return err
	}
	out := make([]voucherView, len(vs))
	for i, v := range vs {
		out[i] = viewVoucher(v)
	}
	return c.JSON(fiber.Map{"vouchers": out})
}

type jobRequest struct {
	ResourceClass  string    `json:"resource_class"`
	Regions        []string  `json:"regions"`
	Units          int64     `json:"units"`
	Hours          int64     `json:"hours"`
	MaxPrice       string    `json:"max_price"`
	Certifications []string  `json:"certifications"`
	UseVouchers    *bool     `json:"use_vouchers"`
	TimeInForce    string    `json:"time_in_force"`
	ExpiresAt      time.Time `json:"expires_at"`
	AllowSplit     bool      `json:"allow_split"`
}

func (h *handlers) job(c *fiber.Ctx) (JobRequest, error) {
	if err := requireRole(caller(c), market.RoleSME); err != nil {
		return JobRequest{}, err
	}
	var r jobRequest
	if err := decode(c, &r); err != nil {
		return JobRequest{}, err
	}
	return JobRequest(r), nil
}

func (h *handlers) quote(c *fiber.Ctx) error {
	job, err := h.job(c)
	if err != nil {
		return err
	}
	best, alts, err := h.svc.Quote(c.UserContext(), caller(c), job)
	if err != nil {
		return err
	}
	v := viewMatch(best, job)
	v.Alternatives = []quoteView{}
	for _, a := range alts {
		v.Alternatives = append(v.Alternatives, viewMatch(a, job))
	}
	return c.JSON(v)
}

func (h *handlers) placeOrder(c *fiber.Ctx) error {
	if err := requireRole(caller(c), market.RoleSME); err != nil {
		return err
	}
	key := c.Get("Idempotency-Key")
	if key == "" {
		return market.Invalid("the Idempotency-Key header is required")
	}
	job, err := h.job(c)
	if err != nil {
		return err
	}
	o, created, err := h.svc.PlaceOrder(c.UserContext(), caller(c), key, job)
	if err != nil {
		return err
	}
	status := fiber.StatusCreated
	if !created {
		c.Set("Idempotent-Replayed", "true")
	}
	return c.Status(status).JSON(viewOrder(o))
}

func (h *handlers) getOrder(c *fiber.Ctx) error {
	o, err := h.svc.Order(c.UserContext(), caller(c), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(viewOrder(o))
}

func (h *handlers) orders(c *fiber.Ctx) error {
	os, err := h.svc.Orders(c.UserContext(), caller(c))
	if err != nil {
		return err
	}
	out := make([]orderView, len(os))
	for i, o := range os {
		out[i] = viewOrder(o)
	}
	return c.JSON(fiber.Map{"orders": out})
}

func (h *handlers) cancelOrder(c *fiber.Ctx) error {
	o, err := h.svc.CancelOrder(c.UserContext(), caller(c), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(viewOrder(o))
}

func (h *handlers) leaseStatus(to market.LeaseStatus) fiber.Handler {
	return func(c *fiber.Ctx) error {
		l, err := h.svc.SetLeaseStatus(c.UserContext(), caller(c), c.Params("id"), to)
		if err != nil {
			return err
		}
		return c.JSON(viewLease(l))
	}
}

func (h *handlers) leases(c *fiber.Ctx) error {
	ls, err := h.svc.Leases(c.UserContext(), caller(c))
	if err != nil {
		return err
	}
	out := make([]leaseView, len(ls))
	for i, l := range ls {
		out[i] = viewLease(l)
	}
	return c.JSON(fiber.Map{"leases": out})
}

func (h *handlers) trades(c *fiber.Ctx) error {
	var q TradeQuery
	var err error
	if q.From, err = queryTime(c, "from"); err != nil {
		return err
	}
	if q.To, err = queryTime(c, "to"); err != nil {
		return err
	}
	if q.Limit, err = queryInt(c, "limit"); err != nil {
		return err
	}
	if q.Limit < 0 || q.Limit > 1000 || (c.Query("limit") != "" && q.Limit == 0) {
		return market.Invalid("limit must be from 1 to 1000")
	}
	q.ResourceClass, q.Region, q.Cursor = c.Query("resource_class"), c.Query("region"), c.Query("cursor")
	format := c.Query("format", "json")
	if format != "json" && format != "csv" {
		return market.Invalid("format must be json or csv")
	}
	trades, next, err := h.svc.Trades(c.UserContext(), caller(c), q)
	if err != nil {
		return err
	}
	views := make([]tradeView, len(trades))
	for i, t := range trades {
		views[i] = viewTrade(t)
	}
	if format == "csv" {
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		_ = w.Write(tradeColumns)
		for _, v := range views {
			_ = w.Write(v.row())
		}
		w.Flush()
		c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
		if next != "" {
			c.Set("X-Next-Cursor", next)
		}
		return c.Send(buf.Bytes())
	}
	return c.JSON(fiber.Map{"trades": views, "next_cursor": next})
}
