/**
 * Ids of options known to exist, so a purchase asks PostgreSQL once per
 * option and process. Options are never deleted, so a positive answer can be
 * kept; a negative one never is (the option may be created next). Owned by
 * the purchase service (purchase-service.ts); nothing else writes into it.
 */
export class KnownOptions {
  private readonly ids = new Set<string>()
  constructor (private readonly capacity = 100_000) {}
  has (id: string): boolean { return this.ids.has(id) }
  add (id: string): void {
    if (this.ids.size >= this.capacity) this.ids.clear()
    this.ids.add(id)
  }
}
