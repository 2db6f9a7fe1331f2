// M0: proportion ~ normal(school, sigma): the page's foil, blind to the number of students.
data {
  int<lower=1> N;
  vector<lower=0, upper=1>[N] proportion;
  int<lower=1> J_school;
  array[N] int<lower=1, upper=J_school> school;
  real prior_intercept_location;       // brms: median of the response
}
parameters {
  real Intercept;
  real<lower=0> sd_school;
  real<lower=0> sigma;
  // Centred: about 20 observations per school pin each school mean down.
  vector[J_school] mu_school;
}
model {
  Intercept ~ student_t(3, prior_intercept_location, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sigma ~ student_t(3, 0, 2.5);
  mu_school ~ normal(Intercept, sd_school);
  proportion ~ normal(mu_school[school], sigma);
}
