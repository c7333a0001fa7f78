package broker

import (
	"context"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/catalog"
	"computebroker/internal/testsvc"
	"computebroker/ledger"
	"computebroker/market"
)

// TestReconcileSettlesDeadCheckouts simulates a broker dying on either side
// of the commit point and checks the reconciler captures or releases the
// hold, and that a retry of the same key then behaves.
func TestReconcileSettlesDeadCheckouts(t *testing.T) {
	ctx := context.Background()
	rdb, err := OpenRedis(testsvc.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	offers, led := catalog.New(rdb), ledger.New(rdb)
	svc := NewService(Config{}, offers, led, nil, nil)
	now := time.Now().UTC()
	d := decimal.RequireFromString

	admin := market.Account{ID: "admin", Role: market.RoleAdmin}
	reg := market.Account{ID: "reg", Role: market.RoleRegulator}
	sme, _, err := svc.CreateAccount(ctx, admin, NewAccount{Role: market.RoleSME, Name: "S"})
	if err != nil {
		t.Fatal(err)
	}
	prov, _, err := svc.CreateAccount(ctx, admin, NewAccount{Role: market.RoleProvider, Name: "P"})
	if err != nil {
		t.Fatal(err)
	}
	if prov, err = svc.SetProviderStatus(ctx, reg, prov.ID, market.ProviderApproved); err != nil {
		t.Fatal(err)
	}
	off, err := svc.CreateOffer(ctx, prov, NewOfferRequest{ResourceClass: "cpu.standard", Region: "cn-east", Units: 100, Price: "1.00", MaxHours: 100})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := svc.CreateProgram(ctx, reg, NewProgram{Name: "p", Rate: "0.50", AnnualCapPerCompany: "1000.00", Budget: "1000.00",
		ValidFrom: now.Add(-time.Hour), ValidTo: now.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	v, err := svc.IssueVoucher(ctx, reg, NewVoucher{ProgramID: prog.ID, HolderID: sme.ID, Amount: "100.00"})
	if err != nil {
		t.Fatal(err)
	}
	mk := off.Market()

	// begin places a hold and a draft as a checkout does before its commit.
	begin := func(key, orderID string) (market.Order, ledger.Hold) {
		t.Helper()
		if _, err := led.BeginOrder(ctx, sme.ID, key, "fp-"+key, orderID, now); err != nil {
			t.Fatal(err)
		}
		o := market.Order{ID: orderID, SMEID: sme.ID, Status: market.OrderFilled, OfferID: off.ID, ProviderID: prov.ID,
			LeaseID: "lse_" + orderID, ResourceClass: mk.Class, Region: mk.Region, UnitPrice: d("1.00"), Units: 10, Hours: 2,
			Gross: d("20.00"), Discount: d("10.00"), Net: d("10.00"), VoucherID: v.ID, ProgramID: prog.ID, CreatedAt: now}
		h := ledger.Hold{OrderID: orderID, SMEID: sme.ID, VoucherID: v.ID, ProgramID: prog.ID, Amount: d("10.00"), AnnualCap: d("1000.00"), Market: mk, Now: now}
		if err := led.HoldDiscount(ctx, h); err != nil {
			t.Fatal(err)
		}
		if err := led.SaveDraft(ctx, ledger.Draft{Key: key, Order: o, Hold: &h}); err != nil {
			t.Fatal(err)
		}
		return o, h
	}
	// Died before the commit point.
	begin("dead-before", "ord_before")
	// Died after the commit point.
	o2, _ := begin("dead-after", "ord_after")
	lease := market.Lease{ID: o2.LeaseID, OrderID: o2.ID, OfferID: off.ID, ProviderID: prov.ID, SMEID: sme.ID, ResourceClass: mk.Class, Region: mk.Region, Units: 10, Hours: 2, UnitPrice: d("1.00"), Status: market.LeaseReserved, CreatedAt: now}
	if _, err := offers.Reserve(ctx, catalog.Reservation{Lease: lease, Trade: market.Trade{ID: "trd_after", OrderID: o2.ID}, Price: d("1.00"), Now: now}); err != nil {
		t.Fatal(err)
	}

	funds := func() ledger.Funds {
		fs, err := led.Funds(ctx, sme.ID, now)
		if err != nil || len(fs) != 1 {
			t.Fatalf("funds %v %v", fs, err)
		}
		return fs[0]
	}
	if f := funds(); !f.Available.Equal(d("80.00")) || !f.BudgetLeft.Equal(d("980.00")) {
		t.Fatalf("before reconcile: available %s budget left %s", f.Available, f.BudgetLeft)
	}
	// Holds younger than the cut-off are left alone.
	if c, r, err := svc.Reconcile(ctx, now.Add(-time.Minute)); err != nil || c+r != 0 {
		t.Fatalf("young holds reconciled: %d %d %v", c, r, err)
	}
	c, r, err := svc.Reconcile(ctx, now.Add(time.Second))
	if err != nil || c != 1 || r != 1 {
		t.Fatalf("Reconcile = %d completed, %d released, %v; want 1, 1", c, r, err)
	}
	f := funds()
	if !f.Available.Equal(d("90.00")) || !f.BudgetLeft.Equal(d("990.00")) || !f.CapLeft.Equal(d("990.00")) {
		t.Fatalf("after reconcile: available %s budget left %s cap left %s; want 90, 990, 990", f.Available, f.BudgetLeft, f.CapLeft)
	}
	if o, err := led.SMEOrder(ctx, sme.ID, "ord_after"); err != nil || o.LeaseID != o2.LeaseID {
		t.Fatalf("committed order not recorded: %v %v", o, err)
	}
	if _, err := led.SMEOrder(ctx, sme.ID, "ord_before"); !market.IsCode(err, market.CodeNotFound) {
		t.Fatalf("uncommitted order recorded: %v", err)
	}
	// Again: nothing left to do, nothing counted twice.
	if c, r, err := svc.Reconcile(ctx, now.Add(time.Second)); err != nil || c+r != 0 {
		t.Fatalf("second Reconcile = %d %d %v", c, r, err)
	}
	if f := funds(); !f.Available.Equal(d("90.00")) {
		t.Fatalf("second reconcile moved money: %s", f.Available)
	}
	// Checkouts without a voucher are tracked too: one died past its commit
	// point, one before it.
	plain := func(key, orderID string, commit bool) {
		t.Helper()
		if _, err := led.BeginOrder(ctx, sme.ID, key, "fp-"+key, orderID, now); err != nil {
			t.Fatal(err)
		}
		o := market.Order{ID: orderID, SMEID: sme.ID, Status: market.OrderFilled, OfferID: off.ID, ProviderID: prov.ID,
			LeaseID: "lse_" + orderID, ResourceClass: mk.Class, Region: mk.Region, UnitPrice: d("1.00"), Units: 5, Hours: 1,
			Gross: d("5.00"), Discount: d("0"), Net: d("5.00"), CreatedAt: now}
		if err := led.TrackCheckout(ctx, sme.ID, orderID, mk, now); err != nil {
			t.Fatal(err)
		}
		if err := led.SaveDraft(ctx, ledger.Draft{Key: key, Order: o}); err != nil {
			t.Fatal(err)
		}
		if commit {
			l := market.Lease{ID: o.LeaseID, OrderID: orderID, OfferID: off.ID, ProviderID: prov.ID, SMEID: sme.ID, ResourceClass: mk.Class, Region: mk.Region, Units: 5, Hours: 1, UnitPrice: d("1.00"), Status: market.LeaseReserved, CreatedAt: now}
			if _, err := offers.Reserve(ctx, catalog.Reservation{Lease: l, Trade: market.Trade{ID: "trd_" + orderID, OrderID: orderID}, Price: d("1.00"), Now: now}); err != nil {
				t.Fatal(err)
			}
		}
	}
	plain("plain-after", "ord_plain_after", true)
	plain("plain-before", "ord_plain_before", false)
	if c, r, err := svc.Reconcile(ctx, now.Add(time.Second)); err != nil || c != 1 || r != 1 {
		t.Fatalf("Reconcile of plain checkouts = %d completed, %d dropped, %v; want 1, 1", c, r, err)
	}
	if o, err := led.SMEOrder(ctx, sme.ID, "ord_plain_after"); err != nil || o.Net.StringFixed(2) != "5.00" {
		t.Fatalf("committed plain order not recorded: %v %v", o, err)
	}
	if b, err := led.BeginOrder(ctx, sme.ID, "plain-before", "fp-plain-before", "ord_y", now); err != nil || !b.New {
		t.Fatalf("key of the uncommitted plain checkout not freed: %+v %v", b, err)
	}
	if c, r, err := svc.Reconcile(ctx, now.Add(time.Second)); err != nil || c+r != 0 {
		t.Fatalf("third Reconcile = %d %d %v", c, r, err)
	}

	// The freed key starts afresh; the committed key answers its order.
	b, err := led.BeginOrder(ctx, sme.ID, "dead-before", "fp-dead-before", "ord_new", now)
	if err != nil || !b.New {
		t.Fatalf("freed key: %+v %v", b, err)
	}
	b, err = led.BeginOrder(ctx, sme.ID, "dead-after", "fp-dead-after", "ord_x", now)
	if err != nil || b.New || b.State != "done" || b.OrderID != "ord_after" {
		t.Fatalf("committed key: %+v %v", b, err)
	}
}
