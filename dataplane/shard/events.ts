// The boundary between the client wire codec (client/wire.ts) and the disk encoding of events
// (storage/event-codec.ts): writes are transcoded field by field on their way into a record, and
// reads on their way out, so neither format can change the other by accident.
import { Reader, readEventFields, writeEventFields, type Writer } from '../../client/wire.ts';
import { diskEventSize, readDiskEvent, writeDiskEvent, type DiskEventFields } from '../storage/event-codec.ts';

/** The disk form of a write's events: its size, and a writer that puts it into a record. */
export interface DiskEvents {
  size: number;
  write(dst: Uint8Array, at: number): void;
}

export function wireToDisk(wire: Uint8Array, count: number): DiskEvents {
  const r = new Reader(wire);
  const fields: DiskEventFields[] = [];
  let size = 0;
  for (let i = 0; i < count; i++) {
    const f = readEventFields(r);
    fields.push(f);
    size += diskEventSize(f);
  }
  return {
    size,
    write(dst, at) {
      for (const f of fields) at = writeDiskEvent(dst, at, f);
    },
  };
}

/** Reads one disk-encoded event at `at`; returns its fields and the offset of the next. */
export function diskEventAt(events: Uint8Array, at: number): { fields: DiskEventFields; next: number } {
  return readDiskEvent(events, at);
}

/** Writes a disk event's fields in the wire encoding. */
export function writeWireEvent(w: Writer, f: DiskEventFields): void {
  writeEventFields(w, f);
}
