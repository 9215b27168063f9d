"""Paper trading: the same strategy, CostModel and fill rules as the backtester, driven bar by bar by a feed,
through a risk manager, to a broker, with a write-ahead journal for crash recovery.

    result = qlab.paper_trade("sma_cross", qlab.load_sample("BTC/USDT", "1h").iloc[-2000:])
    trader = PaperTrader(strategy, ReplayFeed(candles), SimBroker(...), risk=RiskLimits(max_drawdown=0.2),
                         store=qlab.Store(), run_id="sma-1");  await trader.run()

Modules: events (event records), journal (write-ahead logs), feed (replay, reconnect), broker (the Broker
protocol, OrderRequest, client ids), sim_broker (simulated fills: "backtest" and "realistic"), book and
latency (the realistic model's parts), market (per-symbol history and fill-model inputs), sizing, risk,
signals (incremental strategy evaluation), state (the account as a fold over events), trader.
"""

from qlab.paper.book import DepthModel
from qlab.paper.broker import Broker, OrderRequest, client_order_id
from qlab.paper.events import Event
from qlab.paper.feed import Feed, ReconnectingFeed, ReplayFeed
from qlab.paper.journal import MemoryJournal, StoreJournal
from qlab.paper.latency import LatencyModel
from qlab.paper.risk import RiskLimits, RiskManager
from qlab.paper.sim_broker import SimBroker
from qlab.paper.trader import JournalMismatchError, PaperResult, PaperTrader, paper_trade

__all__ = ["Broker", "DepthModel", "Event", "Feed", "JournalMismatchError", "LatencyModel", "MemoryJournal", "OrderRequest",
           "PaperResult", "PaperTrader", "ReconnectingFeed", "ReplayFeed", "RiskLimits", "RiskManager", "SimBroker", "StoreJournal",
           "client_order_id", "paper_trade"]
