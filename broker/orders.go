package broker

import (
	"context"

	"computebroker/market"
)

// Order returns an order to its SME, the provider it was leased from, a
// regulator or the operator; to anyone else it does not exist.
func (s *Service) Order(ctx context.Context, caller market.Account, id string) (market.Order, error) {
	o, err := s.ledger.Order(ctx, id)
	if err != nil {
		return o, err
	}
	switch {
	case caller.Role == market.RoleRegulator, caller.Role == market.RoleAdmin:
	case caller.Role == market.RoleSME && o.SMEID == caller.ID:
	case caller.Role == market.RoleProvider && o.ProviderID == caller.ID:
	default:
		return market.Order{}, market.Errorf(market.CodeNotFound, "order %s not found", id)
	}
	return o, nil
}

// Orders lists the calling SME's orders, newest first.
func (s *Service) Orders(ctx context.Context, caller market.Account) ([]market.Order, error) {
	if err := requireRole(caller, market.RoleSME); err != nil {
		return nil, err
	}
	return s.ledger.Orders(ctx, caller.ID, 500)
}
