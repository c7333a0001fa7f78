package broker

import (
	"computebroker/history"
	"computebroker/ledger"
)

type (
	ledgerVoucher = ledger.VoucherState
	// TradeQuery filters the trade history.
	TradeQuery = history.TradeFilter
)
