// Quiet runs: a process warning that reaches stderr looks like a failure among the results. Tests that
// expect one capture it and assert on it (helpers.captureWarnings); any other one fails the run here.
import { expect } from 'chai';

const escaped: string[] = [];
const record = (w: Error & { code?: string }): void => void escaped.push(`${w.name} ${w.code ?? ''}: ${w.message.split('\n')[0]}`);

before(() => {
  process.on('warning', record);
});

after(async () => {
  await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
  process.removeListener('warning', record);
  expect(escaped, 'warnings no test captured').to.deep.equal([]);
});
