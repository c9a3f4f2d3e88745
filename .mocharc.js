// mocha runs the TypeScript specs through ts-node, with the tests' own tsconfig.
process.env.TS_NODE_PROJECT = require('path').join(__dirname, 'test', 'tsconfig.json');
module.exports = {
  require: ['ts-node/register'],
  extension: ['ts'],
  spec: ['test/**/*.spec.ts'],
  timeout: 60000,
  'node-option': ['expose-gc'],
};
