// Where the broker's Varlink socket is found when nobody says otherwise: the one spelling of
// the default path, shared by the daemon's --socket default, the client library, the CLI and
// systemd/iommufd-broker.socket (ListenStream=; test/protocol/address.test.ts compares them).
//
// Invariants:
// - A constant only: no I/O, no environment reads (a caller that wants another path passes it).
// - No other source file spells this path; they import it from here.

export const DEFAULT_SOCKET = '/run/iommufd-broker/broker.sock';
