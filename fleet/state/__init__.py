"""The sections of Fleet's state in Redis, one module each; `fleet.store.Store` composes them
(and `fleet.retire.Retirement`) into the one object callers use. Each section is a mixin over
`fleet.state.base.StoreBase`; a section that writes events or moves handles builds on the one
that does so."""
